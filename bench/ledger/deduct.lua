-- wrk script: POST /api/credits/deduct (or BENCH_PATH) for 1 credit, user ids read from IDS_FILE (one per line),
-- picked round-robin per thread so that the spread case touches every account.
local ids = {}
local token = os.getenv("BENCH_TOKEN")
local path = os.getenv("BENCH_PATH") or "/api/credits/deduct"
for line in io.lines(os.getenv("IDS_FILE")) do ids[#ids + 1] = line end
local counter = 0

function init(args)
  counter = math.random(#ids)
end

request = function()
  counter = counter % #ids + 1
  local body = '{"userId":"' .. ids[counter] .. '","amount":1,"reason":"usage"}'
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
  }, body)
end
