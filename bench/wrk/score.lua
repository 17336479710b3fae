-- wrk: POST /score for many users, each connection walking through the token list.
-- The tokens come from the file named by WRK_TOKENS (a Lua chunk returning a table).
local tokens = dofile(os.getenv("WRK_TOKENS"))
local next_token = 0

function init(args)
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
