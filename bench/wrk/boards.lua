-- wrk: POST /boards/<WRK_PREFIX><n>/score over WRK_BOARDS boards, for many users, each
-- connection walking through the token list (WRK_TOKENS, as score.lua). Token i always
-- writes to board i mod WRK_BOARDS: as many (board, user) rows as score.lua makes on its
-- one board, so both runs change rows that exist rather than one making new ones.
local tokens = dofile(os.getenv("WRK_TOKENS"))
local boards = tonumber(os.getenv("WRK_BOARDS"))
local prefix = os.getenv("WRK_PREFIX")
local next_token = 0

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 1000)
  next_token = math.random(#tokens)
end

function request()
  next_token = next_token % #tokens + 1
  local path = "/boards/" .. prefix .. ((next_token - 1) % boards) .. "/score"
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[next_token],
  }, '{"score": 1}')
end

done = dofile(os.getenv("WRK_REPORT"))
