-- wrk: GET /leaderboard/users/<id> for random users among WRK_USERS (user1 .. userN).
local users = tonumber(os.getenv("WRK_USERS"))

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 1000)
end

function request()
  return wrk.format("GET", "/leaderboard/users/user" .. math.random(users))
end

done = dofile(os.getenv("WRK_REPORT"))
