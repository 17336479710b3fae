-- wrk: ranking queries on a board of WRK_USERS users (user1 .. userN), by WRK_QUERY:
--   rank     GET /leaderboard/users/<random user>
--   page     GET /leaderboard?offset=<random, a twentieth past the end>&limit=10
--   around   GET /leaderboard?around=<random user>&limit=10
--   friends  GET /leaderboard?users=<100 random ids, a tenth of them without a score>
local users = tonumber(os.getenv("WRK_USERS"))
local query = os.getenv("WRK_QUERY") or "rank"

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 1000)
end

local function friends()
  local ids = {}
  for i = 1, 100 do
    if i % 10 == 0 then
      ids[i] = "nobody" .. math.random(users)
    else
      ids[i] = "user" .. math.random(users)
    end
  end
  return table.concat(ids, ",")
end

function request()
  if query == "page" then
    return wrk.format("GET", "/leaderboard?limit=10&offset=" .. math.random(0, math.floor(users * 1.05)))
  elseif query == "around" then
    return wrk.format("GET", "/leaderboard?limit=10&around=user" .. math.random(users))
  elseif query == "friends" then
    return wrk.format("GET", "/leaderboard?users=" .. friends())
  end
  return wrk.format("GET", "/leaderboard/users/user" .. math.random(users))
end

done = dofile(os.getenv("WRK_REPORT"))
