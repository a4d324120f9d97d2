// Every page, in navigation order. A page: {route, title, nav, group, needs?(can), render(root, params, alive)}.

import analytics from "./analytics.js";
import audit from "./audit.js";
import billing from "./billing.js";
import blocked from "./blocked.js";
import dashboard from "./dashboard.js";
import keys from "./keys.js";
import payments from "./payments.js";
import pricing from "./pricing.js";
import promos from "./promos.js";
import quotas from "./quotas.js";
import sora from "./sora.js";
import transactions from "./transactions.js";
import users from "./users.js";
import webhooks from "./webhooks.js";

export const PAGES = [dashboard, transactions, keys, sora, payments, billing, pricing, users, promos, quotas, analytics, audit, blocked, webhooks];
