/*
 * redis_lua.h — (private to store_redis.c) the Lua scripts that are the
 * Redis store's logic.  Each runs atomically inside Redis, so two
 * controllers never both win a decision: creating a session, deciding a
 * slot (and moving it to the asking relay), writing a batch of relay
 * events, announcing links and reading the fleet, reaping under a lease.
 *
 * Keys (P is the prefix, "relay:" by default; the scripts build key names
 * themselves, so this is for a standalone Redis or one behind Sentinel,
 * not Redis Cluster):
 *   P s:<id>      hash, one session: hi hr (hex SHA-256 of the slot tokens;
 *                 never the tokens), c e (created, expires: unix s), la
 *                 (last activity), pw (peer_wait s), n u (the relay that
 *                 serves it and its URL), s1 s2 (relay holding each slot,
 *                 "" free), ev ("1" once a peer came), ctr (counters:
 *                 "retired_in retired_out {epoch in out}..."), q (seq).
 *                 Expires natively at e (PEXPIREAT).
 *   P idx         zset id -> creation seq: listing order, page tokens
 *   P exp         zset id -> e: the reaper's queue
 *   P where       hash id -> relay: whom to kick when it expires
 *   P load:<n>    zset id -> e: sessions counted in relay n's load (a peer
 *                 held, or no peer yet)
 *   P live:<n>    hash controller -> ms: until when that controller links
 *                 relay n (renewed each heartbeat)
 *   P info:<n>    hash url, region: what relay n's Hello said
 *   P nodes       set of relays ever seen; P gone: those found dead, whose
 *                 slots were freed
 *   P seq, P id   counters: creation sequence, the registry id
 *   P lease       the reaper lease (controller name, PX)
 *   P kick        pub/sub channel: kicks for whoever links the relay
 * Times are Redis's own clock (TIME), so controllers' clocks need not agree.
 */
#ifndef RELAY_CONTROLLER_REDIS_LUA_H
#define RELAY_CONTROLLER_REDIS_LUA_H

/* Shared by every script: ARGV[1] is always the prefix. */
#define LUA_COMMON                                                                                 \
  "local P = ARGV[1]\n"                                                                            \
  "local T = redis.call('TIME')\n"                                                                 \
  "local NOW = tonumber(T[1])\n"                                                                   \
  "local NOWMS = NOW * 1000 + math.floor(tonumber(T[2]) / 1000)\n"                                 \
  "local function skey(id) return P .. 's:' .. id end\n"                                           \
  "local function live(node)\n"                                                                    \
  "  if not node or node == '' then return false end\n"                                            \
  "  local t = redis.call('HVALS', P .. 'live:' .. node)\n"                                        \
  "  for i = 1, #t do if tonumber(t[i]) > NOWMS then return true end end\n"                        \
  "  return false\n"                                                                               \
  "end\n"                                                                                          \
  "local function n2s(x) return string.format('%.0f', x) end\n"                                    \
  "local function ctr_parse(c)\n"                                                                  \
  "  local v = {}\n"                                                                               \
  "  for w in string.gmatch(c or '', '%S+') do v[#v + 1] = w end\n"                                \
  "  local r = {ri = tonumber(v[1] or '0'), ro = tonumber(v[2] or '0'), ep = {}}\n"                \
  "  local i = 3\n"                                                                                \
  "  while v[i + 2] do\n"                                                                          \
  "    r.ep[#r.ep + 1] = {v[i], tonumber(v[i + 1]), tonumber(v[i + 2])}\n"                         \
  "    i = i + 3\n"                                                                                \
  "  end\n"                                                                                        \
  "  return r\n"                                                                                   \
  "end\n"                                                                                          \
  "local F = {'c', 'e', 'la', 'pw', 'n', 'u', 's1', 's2', 'ctr', 'hi', 'hr', 'ev', 't'}\n"         \
  "local function load_s(id)\n"                                                                    \
  "  local v = redis.call('HMGET', skey(id), unpack(F))\n"                                         \
  "  if not v[2] then return nil end\n"                                                            \
  "  local s = {}\n"                                                                               \
  "  for i = 1, #F do s[F[i]] = v[i] or '' end\n"                                                  \
  "  if tonumber(s.e) <= NOW then return nil end\n"                                                \
  "  return s\n"                                                                                   \
  "end\n"                                                                                          \
  "local function status(id, s)\n"                                                                 \
  "  local c = ctr_parse(s.ctr)\n"                                                                 \
  "  local a, b = c.ri, c.ro\n"                                                                    \
  "  for i = 1, #c.ep do a = a + c.ep[i][2]; b = b + c.ep[i][3] end\n"                             \
  "  return {id, tonumber(s.c), tonumber(s.e), tonumber(s.la), tonumber(s.pw), s.n, s.u,\n"        \
  "          s.s1, s.s2, a, b, s.t}\n"                                                             \
  "end\n"                                                                                          \
  "local function recount(id, s)\n"                                                                \
  "  if s.n == '' then return end\n"                                                               \
  "  if s.s1 ~= '' or s.s2 ~= '' or s.ev ~= '1' then\n"                                            \
  "    redis.call('ZADD', P .. 'load:' .. s.n, tonumber(s.e), id)\n"                               \
  "  else\n"                                                                                       \
  "    redis.call('ZREM', P .. 'load:' .. s.n, id)\n"                                              \
  "  end\n"                                                                                        \
  "end\n"                                                                                          \
  "local function forget(id, node)\n"                                                              \
  "  redis.call('DEL', skey(id))\n"                                                                \
  "  redis.call('ZREM', P .. 'idx', id)\n"                                                         \
  "  redis.call('ZREM', P .. 'exp', id)\n"                                                         \
  "  redis.call('HDEL', P .. 'where', id)\n"                                                       \
  "  if node ~= '' then redis.call('ZREM', P .. 'load:' .. node, id) end\n"                        \
  "end\n"

/* ARGV: P id hi hr ttl pw node url max_sessions target -> {201, created, expires}
 * | {429} | {409} (id taken). */
#define LUA_CREATE                                                                                 \
  LUA_COMMON                                                                                       \
  "local id, node = ARGV[2], ARGV[7]\n"                                                            \
  "if redis.call('ZCARD', P .. 'idx') >= tonumber(ARGV[9]) then return {429} end\n"                \
  "local k = skey(id)\n"                                                                           \
  "if redis.call('EXISTS', k) == 1 then return {409} end\n"                                        \
  "local e = NOW + tonumber(ARGV[5])\n"                                                            \
  "local seq = redis.call('INCR', P .. 'seq')\n"                                                   \
  "redis.call('HSET', k, 'hi', ARGV[3], 'hr', ARGV[4], 'c', NOW, 'e', e, 'la', NOW,\n"             \
  "           'pw', ARGV[6], 'n', node, 'u', ARGV[8], 's1', '', 's2', '', 'ctr', '',\n"            \
  "           'ev', '0', 'q', seq, 't', ARGV[10])\n"                                               \
  "redis.call('PEXPIREAT', k, e * 1000)\n"                                                         \
  "redis.call('ZADD', P .. 'idx', seq, id)\n"                                                      \
  "redis.call('ZADD', P .. 'exp', e, id)\n"                                                        \
  "redis.call('HSET', P .. 'where', id, node)\n"                                                   \
  "if node ~= '' then\n"                                                                           \
  "  redis.call('ZADD', P .. 'load:' .. node, e, id)\n"                                            \
  "  redis.call('SADD', P .. 'nodes', node)\n"                                                     \
  "end\n"                                                                                          \
  "return {201, NOW, e}\n"

/* ARGV: P id hash role asker -> {404} | {401, reason} | {409} | {421} |
 * {200, slot, expires, peer_wait, moved_from}.  A slot held by a live relay
 * other than the asker is taken; the asker's own claim is not (it refuses a
 * slot it holds itself, and its detach may still be in a batch).  A session
 * whose relay no controller links moves to the asker, atomically: of two
 * relays racing for it, exactly one gets it and the other a 421. */
#define LUA_VALIDATE                                                                               \
  LUA_COMMON                                                                                       \
  "local id, asker = ARGV[2], ARGV[5]\n"                                                           \
  "local s = load_s(id)\n"                                                                         \
  "if not s then return {404} end\n"                                                               \
  "local slot = 0\n"                                                                               \
  "if ARGV[3] == s.hi then slot = 1 elseif ARGV[3] == s.hr then slot = 2 end\n"                    \
  "if slot == 0 then return {401, 'invalid_token'} end\n"                                          \
  "local role = tonumber(ARGV[4])\n"                                                               \
  "if role ~= 0 and role ~= slot then return {401, 'role_mismatch'} end\n"                         \
  "if slot == 2 and s.t ~= '' then return {403} end\n"                                             \
  "local holder = s['s' .. slot]\n"                                                                \
  "if holder ~= '' and holder ~= asker and live(holder) then return {409} end\n"                   \
  "if asker == '' or s.n == asker then\n"                                                          \
  "  return {200, slot, tonumber(s.e), tonumber(s.pw), '', s.t}\n"                                 \
  "end\n"                                                                                          \
  "if s.n ~= '' and live(s.n) then return {421} end\n"                                             \
  "local url = redis.call('HGET', P .. 'info:' .. asker, 'url') or s.u\n"                          \
  "if s.n == '' or redis.call('ZREM', P .. 'load:' .. s.n, id) == 1 then\n"                        \
  "  redis.call('ZADD', P .. 'load:' .. asker, tonumber(s.e), id)\n"                               \
  "end\n"                                                                                          \
  "redis.call('HSET', skey(id), 'n', asker, 'u', url)\n"                                           \
  "redis.call('HSET', P .. 'where', id, asker)\n"                                                  \
  "redis.call('SADD', P .. 'nodes', asker)\n"                                                      \
  "return {200, slot, tonumber(s.e), tonumber(s.pw), s.n, s.t}\n"

/* ARGV: P id -> {1, status...} | {0} */
#define LUA_GET                                                                                    \
  LUA_COMMON                                                                                       \
  "local s = load_s(ARGV[2])\n"                                                                    \
  "if not s then return {0} end\n"                                                                 \
  "return {1, status(ARGV[2], s)}\n"

/* ARGV: P id -> {1, status...} (the last one) | {0} */
#define LUA_DELETE                                                                                 \
  LUA_COMMON                                                                                       \
  "local s = load_s(ARGV[2])\n"                                                                    \
  "if not s then return {0} end\n"                                                                 \
  "forget(ARGV[2], s.n)\n"                                                                         \
  "return {1, status(ARGV[2], s)}\n"

/* ARGV: P after_seq max -> {next_token, status...}.  Looks at no more than
 * about four pages' worth of members per call (expired ones not yet
 * reaped are skipped), so a page may come short with a token to go on. */
#define LUA_LIST                                                                                   \
  LUA_COMMON                                                                                       \
  "local max = tonumber(ARGV[3])\n"                                                                \
  "local min = ARGV[2] == '0' and '-inf' or '(' .. ARGV[2]\n"                                      \
  "local budget = max * 4 + 64\n"                                                                  \
  "local out = {''}\n"                                                                             \
  "local n, pos = 0, nil\n"                                                                        \
  "while true do\n"                                                                                \
  "  local b = redis.call('ZRANGEBYSCORE', P .. 'idx', min, '+inf', 'WITHSCORES', 'LIMIT', 0,\n"   \
  "                       math.min(budget, 256))\n"                                                \
  "  if #b == 0 then return out end\n"                                                             \
  "  for i = 1, #b, 2 do\n"                                                                        \
  "    local s = load_s(b[i])\n"                                                                   \
  "    if s and n == max then out[1] = pos; return out end\n"                                      \
  "    if s then n = n + 1; out[#out + 1] = status(b[i], s) end\n"                                 \
  "    pos = b[i + 1] .. '.' .. b[i]\n"                                                            \
  "    min = '(' .. b[i + 1]\n"                                                                    \
  "    budget = budget - 1\n"                                                                      \
  "    if budget == 0 then out[1] = pos; return out end\n"                                         \
  "  end\n"                                                                                        \
  "end\n"

/* ARGV: P then records {id, op1, forced1, node1, op2, forced2, node2,
 * last_activity, nepochs, {epoch, in, out}...}, op N(one) A(ttach)
 * D(etach) -> {id, relay, ...}: the ATTACHes to sessions not held
 * (deleted, expired), whose peers are to be kicked.  Counters keep the largest total
 * of each of the last four epochs and fold older ones into retired ones
 * (as registry.c does). */
#define LUA_EVENTS                                                                                 \
  LUA_COMMON                                                                                       \
  "local function merge(c, e, a, b)\n"                                                             \
  "  for k = 1, #c.ep do\n"                                                                        \
  "    if c.ep[k][1] == e then\n"                                                                  \
  "      if a > c.ep[k][2] then c.ep[k][2] = a end\n"                                              \
  "      if b > c.ep[k][3] then c.ep[k][3] = b end\n"                                              \
  "      return\n"                                                                                 \
  "    end\n"                                                                                      \
  "  end\n"                                                                                        \
  "  if #c.ep == 4 then\n"                                                                         \
  "    c.ri = c.ri + c.ep[1][2]; c.ro = c.ro + c.ep[1][3]; table.remove(c.ep, 1)\n"                \
  "  end\n"                                                                                        \
  "  c.ep[#c.ep + 1] = {e, a, b}\n"                                                                \
  "end\n"                                                                                          \
  "local function text(c)\n"                                                                       \
  "  local t = {n2s(c.ri), n2s(c.ro)}\n"                                                           \
  "  for k = 1, #c.ep do\n"                                                                        \
  "    t[#t + 1] = c.ep[k][1]; t[#t + 1] = n2s(c.ep[k][2]); t[#t + 1] = n2s(c.ep[k][3])\n"         \
  "  end\n"                                                                                        \
  "  return table.concat(t, ' ')\n"                                                                \
  "end\n"                                                                                          \
  "local i, unknown = 2, {}\n"                                                                     \
  "while i <= #ARGV do\n"                                                                          \
  "  local id, la, nep = ARGV[i], tonumber(ARGV[i + 7]), tonumber(ARGV[i + 8])\n"                  \
  "  local s = load_s(id)\n"                                                                       \
  "  if s then\n"                                                                                  \
  "    for slot = 1, 2 do\n"                                                                       \
  "      local op, forced, node = ARGV[i + 3 * slot - 2], ARGV[i + 3 * slot - 1],\n"               \
  "                               ARGV[i + 3 * slot]\n"                                            \
  "      local f = 's' .. slot\n"                                                                  \
  "      if op == 'A' then s[f] = node; s.ev = '1'\n"                                              \
  "      elseif op == 'D' and (forced == '1' or s[f] == node) then s[f] = '' end\n"                \
  "    end\n"                                                                                      \
  "    if nep > 0 then\n"                                                                          \
  "      local c = ctr_parse(s.ctr)\n"                                                             \
  "      for j = 0, nep - 1 do\n"                                                                  \
  "        local b = i + 9 + 3 * j\n"                                                              \
  "        merge(c, ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]))\n"                      \
  "      end\n"                                                                                    \
  "      s.ctr = text(c)\n"                                                                        \
  "    end\n"                                                                                      \
  "    if la > tonumber(s.la) then s.la = n2s(la) end\n"                                           \
  "    redis.call('HSET', skey(id), 's1', s.s1, 's2', s.s2, 'ev', s.ev, 'ctr', s.ctr,\n"           \
  "               'la', s.la)\n"                                                                   \
  "    recount(id, s)\n"                                                                           \
  "  else\n"                                                                                       \
  "    for slot = 1, 2 do\n"                                                                       \
  "      if ARGV[i + 3 * slot - 2] == 'A' then\n"                                                  \
  "        unknown[#unknown + 1] = id; unknown[#unknown + 1] = ARGV[i + 3 * slot]; break\n"        \
  "      end\n"                                                                                    \
  "    end\n"                                                                                      \
  "  end\n"                                                                                        \
  "  i = i + 9 + 3 * nep\n"                                                                        \
  "end\n"                                                                                          \
  "return unknown\n"

/* ARGV: P me hold_ms n {node url region}*n -> {{node, url, region, load}...}
 * for every relay some controller links.  Renews this controller's claim
 * on the relays it links and drops its claim on the others at once. */
#define LUA_HEARTBEAT                                                                              \
  LUA_COMMON                                                                                       \
  "local me, mine = ARGV[2], {}\n"                                                                 \
  "local hold = NOWMS + tonumber(ARGV[3])\n"                                                       \
  "for j = 0, tonumber(ARGV[4]) - 1 do\n"                                                          \
  "  local node = ARGV[5 + 3 * j]\n"                                                               \
  "  mine[node] = true\n"                                                                          \
  "  redis.call('HSET', P .. 'live:' .. node, me, hold)\n"                                         \
  "  redis.call('HSET', P .. 'info:' .. node, 'url', ARGV[6 + 3 * j], 'region',\n"                 \
  "             ARGV[7 + 3 * j])\n"                                                                \
  "  redis.call('SADD', P .. 'nodes', node)\n"                                                     \
  "  redis.call('SREM', P .. 'gone', node)\n"                                                      \
  "end\n"                                                                                          \
  "local view = {}\n"                                                                              \
  "for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do\n"                               \
  "  if not mine[node] then redis.call('HDEL', P .. 'live:' .. node, me) end\n"                    \
  "  if live(node) then\n"                                                                         \
  "    local inf = redis.call('HMGET', P .. 'info:' .. node, 'url', 'region')\n"                   \
  "    view[#view + 1] = {node, inf[1] or '', inf[2] or '',\n"                                     \
  "                       redis.call('ZCOUNT', P .. 'load:' .. node, '(' .. NOW, '+inf')}\n"       \
  "  end\n"                                                                                        \
  "end\n"                                                                                          \
  "return view\n"

/* ARGV: P me lease_ms max -> {0} (another controller holds the lease) |
 * {1, id, relay, ...} (expired sessions removed).  Takes or renews the
 * lease, reaps up to max expired sessions, and frees the slots of relays
 * that no controller links any more (once per death). */
#define LUA_REAP                                                                                   \
  LUA_COMMON                                                                                       \
  "local lk = P .. 'lease'\n"                                                                      \
  "local holder = redis.call('GET', lk)\n"                                                         \
  "if holder == ARGV[2] then redis.call('PEXPIRE', lk, ARGV[3])\n"                                 \
  "elseif holder then return {0}\n"                                                                \
  "else redis.call('SET', lk, ARGV[2], 'PX', ARGV[3]) end\n"                                       \
  "local out = {1}\n"                                                                              \
  "local ids = redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', NOW, 'LIMIT', 0,\n"                 \
  "                       tonumber(ARGV[4]))\n"                                                    \
  "for _, id in ipairs(ids) do\n"                                                                  \
  "  local node = redis.call('HGET', P .. 'where', id) or ''\n"                                    \
  "  forget(id, node)\n"                                                                           \
  "  out[#out + 1] = id; out[#out + 1] = node\n"                                                   \
  "end\n"                                                                                          \
  "for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do\n"                               \
  "  local lk2 = P .. 'live:' .. node\n"                                                           \
  "  local t = redis.call('HGETALL', lk2)\n"                                                       \
  "  local alive = false\n"                                                                        \
  "  for j = 1, #t, 2 do\n"                                                                        \
  "    if tonumber(t[j + 1]) > NOWMS then alive = true else redis.call('HDEL', lk2, t[j]) end\n"   \
  "  end\n"                                                                                        \
  "  if not alive and redis.call('SISMEMBER', P .. 'gone', node) == 0 then\n"                      \
  "    for _, id in ipairs(redis.call('ZRANGE', P .. 'load:' .. node, 0, -1)) do\n"                \
  "      local s = load_s(id)\n"                                                                   \
  "      if s then\n"                                                                              \
  "        if s.s1 == node then s.s1 = '' end\n"                                                   \
  "        if s.s2 == node then s.s2 = '' end\n"                                                   \
  "        redis.call('HSET', skey(id), 's1', s.s1, 's2', s.s2)\n"                                 \
  "        recount(id, s)\n"                                                                       \
  "      end\n"                                                                                    \
  "    end\n"                                                                                      \
  "    redis.call('SADD', P .. 'gone', node)\n"                                                    \
  "  end\n"                                                                                        \
  "end\n"                                                                                          \
  "return out\n"

#endif
