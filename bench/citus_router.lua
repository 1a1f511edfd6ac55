-- Request generator for bench/citus_router.sh.
--
--   wrk ... -s bench/citus_router.lua http://127.0.0.1:PORT -- MODE FILE
--
--   user_get FILE   GET /user/get/<id>, a random user id from FILE per request
--   post_get FILE   GET /post/get/<id>, a random post id from FILE per request
--
-- done() prints: RESULT <requests/s> <p50 ms> <p90 ms> <p99 ms> <requests> <errors>

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_index", thread_count)
end

function init(args)
  mode = args[1]
  items = {}
  -- (assert returns its message too, which io.lines would take as a read format: keep it apart)
  local path = assert(args[2], "a file of ids is needed")
  for line in io.lines(path) do
    if line ~= "" then
      items[#items + 1] = line
    end
  end
  assert(#items > 0, "no ids in " .. args[2])
  if mode == "user_get" then
    prefix = "/user/get/"
  elseif mode == "post_get" then
    prefix = "/post/get/"
  else
    error("unknown mode " .. tostring(mode))
  end
  math.randomseed(os.time() * 100 + (thread_index or 0))
end

function request()
  return wrk.format("GET", prefix .. items[math.random(#items)])
end

function done(summary, latency, requests)
  local errors = summary.errors
  local failed = errors.connect + errors.read + errors.write + errors.timeout + errors.status
  io.write(string.format(
    "RESULT %.1f %.3f %.3f %.3f %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000,
    latency:percentile(90) / 1000,
    latency:percentile(99) / 1000,
    summary.requests,
    failed
  ))
end
