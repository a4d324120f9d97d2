-- wrk script: POST /api/usage/events, each with a new requestId (thread id + counter + run id),
-- for users read from IDS_FILE (one per line) and a model drawn from the seeded price list.
local ids = {}
local token = os.getenv("BENCH_TOKEN")
local run = os.getenv("BENCH_RUN") or "run"
for line in io.lines(os.getenv("IDS_FILE")) do ids[#ids + 1] = line end
local models = {
  {"openai", "gpt-4o"}, {"openai", "gpt-4o-mini"}, {"openai", "gpt-4.1-mini"},
  {"anthropic", "claude-sonnet-4"}, {"anthropic", "claude-3-5-haiku"},
  {"google", "gemini-2.5-flash"}, {"google", "gemini-2.0-flash"},
}
local threads = 0
local counter = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  math.randomseed(os.time() + tid * 7919)
end

request = function()
  counter = counter + 1
  local user = ids[math.random(#ids)]
  local m = models[math.random(#models)]
  local body = string.format(
    '{"requestId":"%s-%d-%d","userId":"%s","provider":"%s","model":"%s","inputTokens":%d,"outputTokens":%d}',
    run, tid, counter, user, m[1], m[2], math.random(0, 4000), math.random(0, 1000))
  return wrk.format("POST", "/api/usage/events", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
  }, body)
end
