"""The gateway: the only public entry, an aiohttp server in front of auth, core and mcp.

One module per concern. ``app`` dispatches each request through them in a fixed order:

- ``context``: what a request carries (``Ctx``) and the gateway's own JSON answers;
- ``edges``, ``ipblock``: the normalised path; the client's address, blocks and automatic bans;
- ``ipblock_admin``: the block list's admin API (``/api/gateway/blocked-ips``);
- ``health``, ``docs``, ``console``, ``openapi``: what the gateway answers itself;
- ``routing``: which route a path takes, to which upstream group;
- ``identify`` (``authcheck``, ``apikeys``): who is calling;
- ``limits`` (``ratelimit``, ``redispipe``): revocation and rate limit, one Redis round trip;
- ``proxy``, ``websocket``, ``balancer``, ``upstream``: the hop to an upstream instance;
- ``headers``: what every response gets (request ID, security, CORS) and the CORS preflight;
- ``accesslog``, ``metrics``: one log line and the metrics per request;
- ``server``: the HTTP server, with the gateway's answer to requests that do not parse.
"""
