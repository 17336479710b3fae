-- wrk: POST /score for many users, each thread walking through the token list from a
-- start of its own. The tokens come from the file named by WRK_TOKENS (a Lua chunk
-- returning a table).
local tokens = dofile(os.getenv("WRK_TOKENS"))
local next_token = 0

-- Runs in wrk's main Lua state, once per thread, before it starts: numbers the threads.
function setup(thread)
  threads_set_up = (threads_set_up or 0) + 1
  thread:set("thread_number", threads_set_up)
end

function init(args)
  -- Seeded per thread: unseeded, every thread started at the same token, and the
  -- threads sent the same users' writes at the same moments.
  math.randomseed(os.time() + thread_number * 7919)
  next_token = math.random(#tokens)
end

function request()
  next_token = next_token % #tokens + 1
  return wrk.format("POST", "/score", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[next_token],
  }, '{"score": 1}')
end

done = dofile(os.getenv("WRK_REPORT"))
