-- Request generator for bench/run.sh.
--
--   wrk ... -s bench/wrk.lua http://127.0.0.1:PORT -- MODE [FILE]
--
--   health         GET /health
--   user_get FILE  GET /user/get/<id>, a random id from FILE per request
--   feed FILE      GET /post/feed with a random bearer token from FILE per request
--
-- done() prints one machine-readable line, parsed by bench/helpers.py:
--   RESULT <requests/s> <p50 ms> <p90 ms> <p99 ms> <requests> <errors>
-- (errors = connect/read/write/timeout errors plus non-2xx/3xx responses)

local thread_count = 0

function setup(thread)
  -- Runs in the main Lua state, before each thread's init(): number the threads so that each
  -- one seeds its own random sequence.
  thread_count = thread_count + 1
  thread:set("thread_index", thread_count)
end

local function read_lines(path)
  local lines = {}
  for line in io.lines(path) do
    if line ~= "" then
      lines[#lines + 1] = line
    end
  end
  if #lines == 0 then
    error("no lines in " .. path)
  end
  return lines
end

function init(args)
  mode = args[1] or "health"
  if mode ~= "health" then
    items = read_lines(assert(args[2], mode .. " needs a file argument"))
  end
  math.randomseed(os.time() * 100 + (thread_index or 0))
end

function request()
  if mode == "health" then
    return wrk.format("GET", "/health")
  elseif mode == "user_get" then
    return wrk.format("GET", "/user/get/" .. items[math.random(#items)])
  elseif mode == "feed" then
    return wrk.format("GET", "/post/feed", { ["Authorization"] = "Bearer " .. items[math.random(#items)] })
  end
  error("unknown mode " .. tostring(mode))
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
