//! Whole-cluster presence in Redis: which members hold a uid, changed by atomic Lua steps that
//! say when a uid came online or went offline anywhere in the cluster, and the reaping of a
//! dead member's uids. Runs on the bus's command thread (`crate::cluster`), never on a
//! worker's loop; the loop's side is `event_loop::presence_cluster`.
//!
//! What Redis holds, under the prefix `P` (beside the bus's own keys):
//!
//! - `P:pu:UID`, the members (`NODE/PID`) that hold a connection of UID. A script adds or
//!   removes a member and, in the same atomic step, counts the set: 0 → 1 is the uid's
//!   `online`, 1 → 0 its `offline`. Two members logging the same uid in at once therefore see
//!   one transition between them.
//! - `P:pm:MEMBER`, the uids MEMBER holds (its index), and `P:pmembers`, the members that have
//!   an index. A member whose `P:alive:MEMBER` key expired (killed, or cut off from Redis for
//!   longer than its time to live) is reaped by whichever live member runs the reaping script
//!   first: the script takes uids out of the dead member's index with `SPOP`, so each uid is
//!   handled by exactly one script run, and the member that ran it emits the `offline`s.
//! - `P:pepoch`, a random value set by the first member that finds it missing: a member that
//!   reconnects and finds another epoch knows Redis lost its data (a restart without
//!   persistence), and puts its uids back without announcing them again.
//!
//! These sets are separate from the bus's routing directory (`P:u:UID`), whose script drops a
//! dead member's entries on the way: presence must see each removal exactly once.

use crate::cluster::BusCmd;
use std::fmt::Write as _;

/// Uids per script call when a member puts its whole list back, and per reaping step: a
/// script holds Redis while it runs, so each does a bounded amount of work.
pub const CHUNK: usize = 1000;
/// Reaping steps per heartbeat at most (the rest waits for the next one).
const REAP_STEPS: usize = 20;
/// Transitions handed to the loop in one event at most (the loop's work per event stays
/// small).
const EVENT_CHUNK: usize = 256;

/// Adds this member to uids. ARGV: prefix, member, quiet ("1": announce nothing), uids….
/// Returns the uids that came online (the first member anywhere to hold them).
const ARRIVE: &str = r#"
local p, m, quiet = ARGV[1], ARGV[2], ARGV[3] == '1'
local out = {}
redis.call('SADD', p .. ':pmembers', m)
for i = 4, #ARGV do
  local u = ARGV[i]
  redis.call('SADD', p .. ':pm:' .. m, u)
  local k = p .. ':pu:' .. u
  if redis.call('SADD', k, m) == 1 and redis.call('SCARD', k) == 1 and not quiet then
    table.insert(out, u)
  end
end
return out
"#;

/// Removes this member from uids. ARGV: prefix, member, uids…. Returns the uids that went
/// offline (no member holds them any more).
const DEPART: &str = r#"
local p, m = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV do
  local u = ARGV[i]
  redis.call('SREM', p .. ':pm:' .. m, u)
  local k = p .. ':pu:' .. u
  if redis.call('SREM', k, m) == 1 and redis.call('SCARD', k) == 0 then
    table.insert(out, u)
  end
end
return out
"#;

/// Starts a resync. ARGV: prefix, member, the epoch this member knew ('' for none), a new
/// epoch in case there is none. Returns {epoch, quiet}: quiet is 1 when Redis holds another
/// epoch than the one this member knew (it lost its data: what the member holds was announced
/// already).
const SYNC_BEGIN: &str = r#"
local p, m, known, fresh = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local e = redis.call('GET', p .. ':pepoch')
if not e then
  redis.call('SET', p .. ':pepoch', fresh)
  e = fresh
end
redis.call('DEL', p .. ':psync:' .. m)
local quiet = 0
if known ~= '' and known ~= e then quiet = 1 end
return {e, quiet}
"#;

/// Ends a resync: what the member's index holds and its list (`P:psync:MEMBER`) does not
/// departed. ARGV: prefix, member. Returns the uids that went offline.
const SYNC_END: &str = r#"
local p, m = ARGV[1], ARGV[2]
local idx, list = p .. ':pm:' .. m, p .. ':psync:' .. m
local out = {}
for _, u in ipairs(redis.call('SDIFF', idx, list)) do
  redis.call('SREM', idx, u)
  local k = p .. ':pu:' .. u
  if redis.call('SREM', k, m) == 1 and redis.call('SCARD', k) == 0 then
    table.insert(out, u)
  end
end
redis.call('DEL', list)
return out
"#;

/// One reaping step. ARGV: prefix, most uids to handle. For each member with an index whose
/// `alive` key is gone, takes uids out of its index; returns {more, uids that went offline},
/// more = 1 when the budget ran out before every dead member was emptied.
const REAP: &str = r#"
local p, budget = ARGV[1], tonumber(ARGV[2])
local out = {}
for _, m in ipairs(redis.call('SMEMBERS', p .. ':pmembers')) do
  if budget <= 0 then return {1, out} end
  if redis.call('EXISTS', p .. ':alive:' .. m) == 0 then
    local idx = p .. ':pm:' .. m
    local uids = redis.call('SPOP', idx, budget)
    for _, u in ipairs(uids) do
      local k = p .. ':pu:' .. u
      if redis.call('SREM', k, m) == 1 and redis.call('SCARD', k) == 0 then
        table.insert(out, u)
      end
    end
    budget = budget - #uids
    if redis.call('EXISTS', idx) == 0 then
      redis.call('SREM', p .. ':pmembers', m)
    end
  end
end
return {0, out}
"#;

/// What the loop asks of presence.
#[derive(Debug)]
pub enum PresenceCmd {
    /// `uid` got its first connection in this worker.
    Arrive(String),
    /// `uid` lost its last connection in this worker.
    Depart(String),
    /// Every uid this worker holds, after (re)connecting to Redis.
    Resync(Vec<String>),
    /// A presence event for the other nodes' subscribers: an envelope published on `P:all`.
    Announce(Vec<u8>),
}

/// A uid's presence changed for the whole cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The uid.
    pub uid: String,
    /// Came online (true) or went offline.
    pub online: bool,
    /// It went offline because the member that held it died (its `alive` key expired).
    pub reaped: bool,
}

/// The command thread's presence state, kept across reconnections.
#[derive(Debug, Default)]
pub struct State {
    /// The Redis epoch this member last saw (empty before its first resync).
    epoch: String,
    /// When this member's last heartbeat on the current connection succeeded: a longer gap
    /// than the `alive` key's life (the process was stopped, its thread starved) means other
    /// members may have reaped it.
    last_beat: Option<std::time::Instant>,
}

/// The arrival script.
fn arrive_script() -> redis::Script {
    redis::Script::new(ARRIVE)
}

/// The departure script.
fn depart_script() -> redis::Script {
    redis::Script::new(DEPART)
}

/// Takes the presence commands out of a batch, keeping the others in order.
pub fn split(batch: Vec<BusCmd>) -> (Vec<BusCmd>, Vec<PresenceCmd>) {
    let mut rest = Vec::with_capacity(batch.len());
    let mut pres = Vec::new();
    for cmd in batch {
        match cmd {
            BusCmd::Presence(p) => pres.push(p),
            other => rest.push(other),
        }
    }
    (rest, pres)
}

/// Transitions in pieces of at most 256, one loop event each (none when empty).
pub fn in_chunks(mut t: Vec<Transition>) -> Vec<Vec<Transition>> {
    let mut out = Vec::with_capacity(t.len().div_ceil(EVENT_CHUNK));
    while t.len() > EVENT_CHUNK {
        let rest = t.split_off(EVENT_CHUNK);
        out.push(std::mem::replace(&mut t, rest));
    }
    if !t.is_empty() {
        out.push(t);
    }
    out
}

/// A fresh epoch value (time and pid: unique enough to tell two Redis lives apart).
fn fresh_epoch(member: &str) -> String {
    let mut s = String::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let _ = write!(s, "{now:x}-{member}");
    s
}

/// Uids from a script's answer.
fn uids(v: redis::Value, online: bool, out: &mut Vec<Transition>) {
    if let redis::Value::Array(items) = v {
        for it in items {
            if let Ok(uid) = redis::from_redis_value::<String>(it) {
                out.push(Transition {
                    uid,
                    online,
                    reaped: false,
                });
            }
        }
    }
}

impl State {
    /// Loads the pipelined scripts on a new connection (a restarted Redis forgets them; the
    /// bus then connects again, which loads them again).
    pub fn load(&mut self, con: &mut redis::Connection) -> redis::RedisResult<()> {
        arrive_script().prepare_invoke().load(con)?;
        depart_script().prepare_invoke().load(con)?;
        self.last_beat = None;
        Ok(())
    }

    /// A heartbeat succeeded; true when the one before was more than `ttl` ago on this
    /// connection: the member's `alive` key expired meanwhile and its entries may have been
    /// reaped, so it must put them back (the bus then tells the loop it is up again, which
    /// resyncs).
    pub fn beat(&mut self, ttl: std::time::Duration) -> bool {
        let now = std::time::Instant::now();
        let gap = self.last_beat.is_some_and(|t| now.duration_since(t) > ttl);
        self.last_beat = Some(now);
        if gap {
            log::warn!(
                "cluster: this worker missed its heartbeats for over {} s (stopped or starved); putting its uids back",
                ttl.as_secs()
            );
        }
        gap
    }

    /// Runs presence commands, in order, in one pipeline (a resync in its own steps); the
    /// transitions they made.
    pub fn run(
        &mut self,
        con: &mut redis::Connection,
        prefix: &str,
        member: &str,
        cmds: Vec<PresenceCmd>,
    ) -> redis::RedisResult<Vec<Transition>> {
        let arrive = arrive_script();
        let depart = depart_script();
        let mut out = Vec::new();
        let mut pipe = redis::pipe();
        // Whether each pipelined command answers transitions (Some(online)) or nothing.
        let mut kinds: Vec<Option<bool>> = Vec::new();
        for cmd in cmds {
            match cmd {
                PresenceCmd::Arrive(uid) => {
                    pipe.cmd("EVALSHA")
                        .arg(arrive.get_hash())
                        .arg(0)
                        .arg(prefix)
                        .arg(member)
                        .arg("0")
                        .arg(uid);
                    kinds.push(Some(true));
                }
                PresenceCmd::Depart(uid) => {
                    pipe.cmd("EVALSHA")
                        .arg(depart.get_hash())
                        .arg(0)
                        .arg(prefix)
                        .arg(member)
                        .arg(uid);
                    kinds.push(Some(false));
                }
                PresenceCmd::Announce(env) => {
                    pipe.cmd("PUBLISH").arg(format!("{prefix}:all")).arg(env);
                    kinds.push(None);
                }
                PresenceCmd::Resync(list) => {
                    // What came before, then the resync on its own.
                    self.flush(con, &mut pipe, &mut kinds, &mut out)?;
                    self.resync(con, prefix, member, &list, &arrive, &mut out)?;
                }
            }
        }
        self.flush(con, &mut pipe, &mut kinds, &mut out)?;
        Ok(out)
    }

    /// Sends the pipeline built so far and reads its transitions.
    fn flush(
        &mut self,
        con: &mut redis::Connection,
        pipe: &mut redis::Pipeline,
        kinds: &mut Vec<Option<bool>>,
        out: &mut Vec<Transition>,
    ) -> redis::RedisResult<()> {
        if kinds.is_empty() {
            return Ok(());
        }
        let answers: Vec<redis::Value> = pipe.query(con)?;
        for (kind, v) in kinds.iter().zip(answers) {
            if let Some(online) = kind {
                uids(v, *online, out);
            }
        }
        *pipe = redis::pipe();
        kinds.clear();
        Ok(())
    }

    /// Puts this member's whole list in place: new uids arrive, uids it no longer holds
    /// depart (both announced, unless Redis lost its data since this member last saw it).
    fn resync(
        &mut self,
        con: &mut redis::Connection,
        prefix: &str,
        member: &str,
        list: &[String],
        arrive: &redis::Script,
        out: &mut Vec<Transition>,
    ) -> redis::RedisResult<()> {
        let (epoch, quiet): (String, i64) = redis::Script::new(SYNC_BEGIN)
            .arg(prefix)
            .arg(member)
            .arg(&self.epoch)
            .arg(fresh_epoch(member))
            .invoke(con)?;
        if quiet == 1 {
            log::info!(
                "cluster: Redis lost its presence data; putting this worker's {} uids back without announcing them",
                list.len()
            );
        }
        self.epoch = epoch;
        let quiet = if quiet == 1 { "1" } else { "0" };
        let sync_key = format!("{prefix}:psync:{member}");
        for chunk in list.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            pipe.cmd("SADD").arg(&sync_key).arg(chunk).ignore();
            pipe.cmd("EVALSHA")
                .arg(arrive.get_hash())
                .arg(0)
                .arg(prefix)
                .arg(member)
                .arg(quiet)
                .arg(chunk);
            let (v,): (redis::Value,) = pipe.query(con)?;
            uids(v, true, out);
        }
        let v: redis::Value = redis::Script::new(SYNC_END)
            .arg(prefix)
            .arg(member)
            .invoke(con)?;
        uids(v, false, out);
        Ok(())
    }

    /// Reaps dead members (a few bounded steps): the uids that went offline with them.
    pub fn reap(
        &mut self,
        con: &mut redis::Connection,
        prefix: &str,
    ) -> redis::RedisResult<Vec<Transition>> {
        let script = redis::Script::new(REAP);
        let mut out = Vec::new();
        for _ in 0..REAP_STEPS {
            let (more, v): (i64, redis::Value) = script.arg(prefix).arg(CHUNK).invoke(con)?;
            uids(v, false, &mut out);
            if more == 0 {
                break;
            }
        }
        for t in &mut out {
            t.reaped = true;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_the_order_of_both_kinds() {
        let batch = vec![
            BusCmd::Arrive("a".into()),
            BusCmd::Presence(PresenceCmd::Arrive("a".into())),
            BusCmd::Depart("a".into()),
            BusCmd::Presence(PresenceCmd::Depart("a".into())),
        ];
        let (rest, pres) = split(batch);
        assert!(matches!(rest[..], [BusCmd::Arrive(_), BusCmd::Depart(_)]));
        assert!(matches!(
            pres[..],
            [PresenceCmd::Arrive(_), PresenceCmd::Depart(_)]
        ));
        assert!(fresh_epoch("n/1").ends_with("-n/1"));
    }

    #[test]
    fn transitions_go_to_the_loop_in_bounded_pieces() {
        let t = |n: usize| -> Vec<Transition> {
            (0..n)
                .map(|i| Transition {
                    uid: format!("u{i}"),
                    online: false,
                    reaped: true,
                })
                .collect()
        };
        assert!(in_chunks(t(0)).is_empty());
        let pieces = in_chunks(t(EVENT_CHUNK * 2 + 1));
        assert_eq!(
            pieces.iter().map(Vec::len).collect::<Vec<_>>(),
            [EVENT_CHUNK, EVENT_CHUNK, 1]
        );
        assert_eq!(pieces[2][0].uid, format!("u{}", EVENT_CHUNK * 2));
    }
}
