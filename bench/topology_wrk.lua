-- Request generator for the Citus / plain PostgreSQL ratio runs of bench/topology_bench.py.
--
--   wrk ... -s bench/topology_wrk.lua http://127.0.0.1:PORT -- MODE FILE
--
--   feed FILE         GET /post/feed with a random bearer token from FILE (warmed feeds: cached reads)
--   user_get FILE     GET /user/get/<id>, a random id from FILE (warmed profiles: cached reads)
--   user_miss FILE T  GET /user/get/<id>, the ids of FILE in turn, split over the T threads (-t T): never read
--                     before, so cache misses while the run asks for fewer than the file holds
--   post_create FILE  POST /post/create with a random bearer token from FILE (writes)
--
-- done() prints one line parsed by bench/topology_bench.py:
--   RESULT <requests/s> <p50 ms> <p99 ms> <requests> <errors>
-- (errors = connect/read/write/timeout errors plus non-2xx/3xx responses)

local thread_count = 0

function setup(thread)
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

local body = '{"text":"Topology bench post: lorem ipsum dolor sit amet, consectetur adipiscing elit"}'

function init(args)
  mode = assert(args[1], "mode?")
  items = read_lines(assert(args[2], mode .. " needs a file argument"))
  item_count = #items
  math.randomseed(os.time() * 100 + (thread_index or 0))
  -- user_miss: thread k of n takes items k, k+n, k+2n, ... so no two requests read one profile.
  cursor = thread_index or 1
  stride = tonumber(args[3] or "1")
end

function request()
  if mode == "feed" then
    return wrk.format("GET", "/post/feed", { ["Authorization"] = "Bearer " .. items[math.random(item_count)] })
  elseif mode == "user_get" then
    return wrk.format("GET", "/user/get/" .. items[math.random(item_count)])
  elseif mode == "user_miss" then
    local id = items[(cursor - 1) % item_count + 1]
    cursor = cursor + stride
    return wrk.format("GET", "/user/get/" .. id)
  elseif mode == "post_create" then
    return wrk.format("POST", "/post/create", {
      ["Authorization"] = "Bearer " .. items[math.random(item_count)],
      ["Content-Type"] = "application/json",
    }, body)
  end
  error("unknown mode " .. tostring(mode))
end

function done(summary, latency, requests)
  local errors = summary.errors
  local failed = errors.connect + errors.read + errors.write + errors.timeout + errors.status
  io.write(string.format(
    "RESULT %.1f %.3f %.3f %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000,
    latency:percentile(99) / 1000,
    summary.requests,
    failed
  ))
end
