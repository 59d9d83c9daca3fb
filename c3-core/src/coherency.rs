//! The coherency engine: L1 plus the rules that keep it from ever serving a
//! value older than the newest commit this node has heard about.
//!
//! # The rules
//!
//! 1. **Versioned invalidation.** Every L2 write gets a row version from one
//!    global sequence, and c3 messages carry it. An L1 entry is dropped when a
//!    message names its key with a *newer* version. So a writer's own
//!    notification, arriving after it stored its new value, leaves that value
//!    alone, while anybody else's later write evicts it.
//! 2. **Bare invalidation.** A bare key (from psql, another language, a
//!    trigger) has no version, so it always evicts.
//! 3. **No stale fill.** A read that goes to L2 takes a [`FillToken`] first.
//!    Its fill is applied only if nothing that could make the value stale was
//!    applied to the key's stripe since: no bare invalidation, no purge, and no
//!    versioned write newer than the value read. "Newer than the value read",
//!    not "newer than anything seen before": commits do not arrive in version
//!    order (a transaction may draw its version before another that commits
//!    first), so a stripe's highest version can already be above a write that
//!    arrives later and makes the read stale. Each stripe therefore keeps,
//!    for any point since its oldest out-of-order version, the highest
//!    version recorded after it; a fill of known version compares that with
//!    its own. Check and insert happen under
//!    the stripe's lock, the same lock invalidations take, so an invalidation
//!    is either fully before the fill (and the fill is dropped) or fully after
//!    (and it evicts the filled entry).
//! 4. **Fail-safe.** While the listener is not LISTENing, invalidations may be
//!    lost, so L1 is purged and bypassed. After LISTEN is re-established it is
//!    purged *again* (anything filled in between may have missed a message),
//!    and only then re-enabled.
//!
//! Stripes (rather than one lock or one counter per key) bound memory; two keys
//! sharing a stripe can only cost each other a dropped fill, never correctness.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::entry::{ENTRY_OVERHEAD, L1Entry};
use crate::protocol::{Body, Notification};
use crate::stats::Counters;

const STRIPES: usize = 256;

/// A value pushed by a peer, kept as the JSON it arrived in: the receiver
/// does not know its type until someone reads it (then it is decoded once
/// and the entry replaced by the typed value).
pub(crate) struct PushedJson(pub(crate) String);

/// How many out-of-order versions a stripe keeps track of (rule 3).
const SUFFIX: usize = 32;

#[derive(Default)]
struct Stripe {
    bare_gen: u64,
    max_version: u64,
    /// Versions applied or noted so far.
    writes: u64,
    /// For any point in the stripe's history, the highest version recorded
    /// after it: `(record number, version)` pairs, numbers rising and
    /// versions falling — the highest version since record `n` is that of
    /// the first pair numbered above `n`. Versions mostly rise, so it
    /// mostly holds one pair.
    suffix: std::collections::VecDeque<(u64, u64)>,
    /// Pairs numbered up to here were dropped (more out-of-order versions
    /// than `SUFFIX`): a token older than that cannot be judged.
    forgotten: u64,
}

impl Stripe {
    fn record(&mut self, version: u64) {
        self.max_version = self.max_version.max(version);
        self.writes += 1;
        while self.suffix.back().is_some_and(|(_, v)| *v <= version) {
            self.suffix.pop_back();
        }
        self.suffix.push_back((self.writes, version));
        if self.suffix.len() > SUFFIX
            && let Some((n, _)) = self.suffix.pop_front()
        {
            self.forgotten = n;
        }
    }

    /// Whether a version above `ceiling` was recorded since `token` (or
    /// the stripe no longer knows, which it must take as yes).
    fn newer_since(&self, token: &FillToken, ceiling: u64) -> bool {
        if token.writes == self.writes {
            return false;
        }
        if token.writes < self.forgotten {
            return true;
        }
        self.suffix
            .iter()
            .find(|(n, _)| *n > token.writes)
            .is_some_and(|(_, v)| *v > ceiling)
    }
}

/// Taken before reading L2; see rule 3 above.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FillToken {
    stripe: usize,
    bare_gen: u64,
    /// The stripe's highest version (see `token_valid`).
    max_version: u64,
    /// How many versions the stripe had recorded: a value of known version
    /// is judged by each one recorded since (see `Stripe::newer_since`), a
    /// value of unknown version (a load in flight, a fill not yet stored)
    /// by whether any was.
    writes: u64,
    epoch: u64,
}

/// How L1 chooses what to evict when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum L1Eviction {
    /// Admission by frequency (TinyLFU) with LRU eviction: keeps the hot set
    /// under scans. The default.
    #[default]
    TinyLfu,
    /// Plain least-recently-used: every new entry is admitted.
    Lru,
}

/// L1 policies beyond capacity.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct L1Settings {
    pub(crate) eviction: L1Eviction,
    /// Longest life of an L1 copy, whatever the entry's TTL.
    pub(crate) ttl: Option<Duration>,
    /// Drop copies not read for this long.
    pub(crate) time_to_idle: Option<Duration>,
}

pub(crate) struct Coherency {
    // Entries by value: cloning one (what moka's `get` does) bumps only the
    // value's `Arc`, the one a hit hands out.
    l1: moka::sync::Cache<String, L1Entry>,
    stripes: Box<[Mutex<Stripe>]>,
    /// Bumped by every whole-L1 purge; a fill whose token predates it is dropped.
    epoch: AtomicU64,
    enabled: AtomicBool,
    /// False when L1 was configured off (capacity 0); then nothing is ever filled.
    l1_configured: bool,
    pub(crate) node_id: String,
    pub(crate) counters: Arc<Counters>,
    pub(crate) metrics: Arc<crate::telemetry::Metrics>,
    /// The cache's clock, for the expiry of pushed values.
    pub(crate) clock: Arc<dyn crate::clock::Clock>,
    pub(crate) observer: Option<crate::events::AppliedObserver>,
}

impl Coherency {
    pub(crate) fn new(
        l1_max_bytes: u64,
        settings: L1Settings,
        node_id: String,
        counters: Arc<Counters>,
        metrics: Arc<crate::telemetry::Metrics>,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Self {
        let mut l1 = moka::sync::Cache::builder()
            .max_capacity(l1_max_bytes)
            .weigher(|k: &String, e: &L1Entry| {
                e.weight
                    .saturating_add(u32::try_from(k.len()).unwrap_or(u32::MAX))
            })
            .eviction_policy(match settings.eviction {
                L1Eviction::TinyLfu => moka::policy::EvictionPolicy::tiny_lfu(),
                L1Eviction::Lru => moka::policy::EvictionPolicy::lru(),
            });
        // No per-entry expiry: moka's costs a fifth of every hit (its timer
        // wheel), and the hit already checks the entry's own times. An
        // expired copy is never served; it stays, counted against capacity,
        // until read again, replaced, evicted for room or past `l1_ttl`.
        if let Some(ttl) = settings.ttl {
            l1 = l1.time_to_live(ttl);
        }
        if let Some(idle) = settings.time_to_idle {
            l1 = l1.time_to_idle(idle);
        }
        let l1 = l1.build();
        Coherency {
            l1,
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            epoch: AtomicU64::new(0),
            enabled: AtomicBool::new(false),
            l1_configured: l1_max_bytes > 0,
            node_id,
            counters,
            metrics,
            clock,
            observer: None,
        }
    }

    fn stripe_of(key: &str) -> usize {
        (crate::key::fnv1a(key.as_bytes()) as usize) % STRIPES
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Stripe> {
        // A panic while holding a stripe lock cannot leave a Stripe half-updated
        // in a harmful way (two integers), so poisoning is ignored.
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether reads may use L1 right now.
    pub(crate) fn l1_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The L1 entry for `key`, if L1 is in use and holds one.
    pub(crate) fn peek(&self, key: &str) -> Option<L1Entry> {
        if !self.l1_enabled() {
            return None;
        }
        self.l1.get(key)
    }

    /// A token for an L2 read (or a source read) whose result may be put in
    /// L1: this node's record of what it applied since, checked when the
    /// result is kept (§3.4 of PROTOCOL.md). `None` when L1 is off. Not to be
    /// confused with `C3::begin_fill`, L2's fence, which takes one of these
    /// per named key.
    pub(crate) fn fill_token(&self, key: &str) -> Option<FillToken> {
        if !self.l1_enabled() {
            return None;
        }
        let stripe = Self::stripe_of(key);
        let s = self.lock(stripe);
        Some(FillToken {
            stripe,
            bare_gen: s.bare_gen,
            max_version: s.max_version,
            writes: s.writes,
            epoch: self.epoch.load(Ordering::Acquire),
        })
    }

    /// Whether nothing visibly invalidated `key` since `token` was taken: a
    /// cheap early drop before a fill goes to L2, whose fence is what keeps
    /// a stale fill out of L2, and `fill` (per version, rule 3) what keeps it
    /// out of L1. It compares the stripe's highest version, so a fill is not
    /// dropped for the versions its own transaction records.
    pub(crate) fn token_valid(&self, _key: &str, token: FillToken) -> bool {
        let s = self.lock(token.stripe);
        self.l1_enabled()
            && self.epoch.load(Ordering::Acquire) == token.epoch
            && s.bare_gen == token.bare_gen
            && s.max_version == token.max_version
    }

    /// Puts `entry` in L1 unless something invalidated `key` since `token` was
    /// taken. Returns whether it was stored.
    pub(crate) fn fill(&self, key: &str, token: FillToken, entry: L1Entry) -> bool {
        let ceiling = entry.version;
        self.fill_up_to(key, token, entry, ceiling)
    }

    /// [`fill`](Self::fill) for a value this node just committed in a
    /// transaction whose versions go up to `ceiling`. The stripe's versions
    /// may have moved up to `ceiling` meanwhile — the transaction's own echo,
    /// often heard before the commit's reply — without making the value
    /// stale: a later write to the same key draws a version above every
    /// version of that transaction, because it waits for its row lock.
    pub(crate) fn fill_up_to(
        &self,
        key: &str,
        token: FillToken,
        entry: L1Entry,
        ceiling: u64,
    ) -> bool {
        let s = self.lock(token.stripe);
        let untouched = self.l1_enabled()
            && self.epoch.load(Ordering::Acquire) == token.epoch
            && s.bare_gen == token.bare_gen
            && !s.newer_since(&token, ceiling);
        if !untouched {
            drop(s);
            Counters::inc(&self.counters.fills_dropped);
            return false;
        }
        // Never replace a newer value with an older one (two fills racing).
        if let Some(existing) = self.l1.get(key)
            && existing.version > entry.version
        {
            return false;
        }
        self.l1.insert(key.to_owned(), entry);
        drop(s);
        true
    }

    /// Parses and applies one payload. A payload that cannot be read may have
    /// been an invalidation, so it purges L1: fail safe, not fail open.
    pub(crate) fn apply_payload(&self, payload: &str) {
        match crate::protocol::parse(payload) {
            Ok(n) => self.apply(&n),
            Err(e) => {
                Counters::inc(&self.counters.malformed_notifications);
                tracing::warn!(
                    target: "c3::coherency",
                    error = %e,
                    payload_len = payload.len(),
                    "malformed notification payload; purging L1"
                );
                self.purge();
            }
        }
    }

    /// Applies a parsed notification. `own` is true when it came from this node.
    pub(crate) fn apply(&self, n: &Notification) {
        let own = n.node.as_deref() == Some(self.node_id.as_str());
        match &n.body {
            Body::Written(entries) => {
                for (version, key) in entries {
                    self.apply_written(key, *version);
                }
            }
            Body::Invalidate(keys) => {
                for key in keys {
                    self.apply_bare(key);
                }
            }
            Body::Pushed(p) => {
                self.apply_written(&p.key, p.version);
                if !own {
                    self.keep_pushed(p);
                }
            }
            Body::Clear => self.purge(),
            Body::Heartbeat => return,
        }
        if !own {
            Counters::inc(if matches!(n.body, Body::Clear) {
                &self.counters.clears_received
            } else {
                &self.counters.key_invalidations_received
            });
            let lag = n.sent_at_us.and_then(|sent| {
                let now = crate::clock::unix_micros(std::time::SystemTime::now());
                now.checked_sub(sent).map(std::time::Duration::from_micros)
            });
            if let Some(lag) = lag {
                self.metrics.lag(lag);
            }
            if let Some(observe) = &self.observer {
                let pushed;
                let (written, invalidated): (&[(u64, String)], &[String]) = match &n.body {
                    Body::Written(w) => (w, &[]),
                    Body::Invalidate(k) => (&[], k),
                    Body::Pushed(p) => {
                        pushed = [(p.version, p.key.clone())];
                        (&pushed, &[])
                    }
                    Body::Clear | Body::Heartbeat => (&[], &[]),
                };
                observe(&crate::events::Applied {
                    from: n.node.as_deref(),
                    lag,
                    written,
                    invalidated,
                    clear: matches!(n.body, Body::Clear),
                });
            }
        }
    }

    /// Puts a peer's pushed value in L1, unless a newer version of the key
    /// is already known (a late push never overwrites a newer value) or the
    /// value has already expired.
    fn keep_pushed(&self, p: &crate::protocol::Pushed) {
        // Only keys a write could have made reach L1: a read that hits it
        // skips the key's character checks (see `C3::get_with_tier`).
        if !self.l1_configured || crate::key::validate_key(&p.key, usize::MAX).is_err() {
            return;
        }
        let now_us = crate::clock::unix_micros(self.clock.now());
        if p.stale_until_us <= now_us {
            return;
        }
        let entry = L1Entry {
            value: Arc::new(PushedJson(p.json.clone())),
            version: p.version,
            fresh_until_us: p.fresh_until_us,
            stale_until_us: p.stale_until_us,
            weight: u32::try_from(p.json.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX),
        };
        // `enabled` is read under the stripe lock, as in `fill_up_to`: a
        // purge takes every stripe lock after clearing it, so no push can
        // land in L1 behind a disable.
        let s = self.lock(Self::stripe_of(&p.key));
        if !self.l1_enabled()
            || s.max_version > p.version
            || self.l1.get(&p.key).is_some_and(|e| e.version >= p.version)
        {
            return;
        }
        self.l1.insert(p.key.clone(), entry);
        drop(s);
        Counters::inc(&self.counters.pushed_values_kept);
    }

    /// Replaces a pushed entry by its decoded value, if L1 still holds that
    /// very entry (a newer write may have replaced or dropped it meanwhile;
    /// the pushed value's `Arc` is the entry's identity).
    pub(crate) fn replace_decoded(
        &self,
        key: &str,
        pushed: &Arc<dyn std::any::Any + Send + Sync>,
        decoded: L1Entry,
    ) {
        let s = self.lock(Self::stripe_of(key));
        if self
            .l1
            .get(key)
            .is_some_and(|e| Arc::ptr_eq(&e.value, pushed))
        {
            self.l1.insert(key.to_owned(), decoded);
        }
        drop(s);
    }

    /// A write at `version` committed for `key`.
    pub(crate) fn apply_written(&self, key: &str, version: u64) {
        let mut s = self.lock(Self::stripe_of(key));
        s.record(version);
        if let Some(e) = self.l1.get(key)
            && e.version < version
        {
            self.l1.invalidate(key);
        }
    }

    /// This node now knows that `version` of `key` exists: it committed it,
    /// or read it from L2. Recording a commit now, rather than when our own
    /// notification comes back, keeps that late echo from looking like a new
    /// write to loads that started after the commit. Recording a version
    /// read from L2 (perhaps before its notification arrived) keeps a fill
    /// or a load that started earlier — and so may hold an older value —
    /// from being kept or joined afterwards.
    pub(crate) fn note_version(&self, key: &str, version: u64) {
        self.lock(Self::stripe_of(key)).record(version);
    }

    /// A token for joining a load in flight: like a fill token, but taken
    /// (and checked) also while L1 is off, since a caller must never be
    /// handed a value older than one it could already have seen.
    pub(crate) fn join_token(&self, key: &str) -> FillToken {
        let stripe = Self::stripe_of(key);
        let s = self.lock(stripe);
        FillToken {
            stripe,
            bare_gen: s.bare_gen,
            max_version: s.max_version,
            writes: s.writes,
            epoch: self.epoch.load(Ordering::Acquire),
        }
    }

    /// Whether nothing has changed `key`'s stripe since `token`, L1 on or
    /// off: no version recorded since — not "the highest version did not
    /// move": a write that arrives late can carry a version below it and
    /// still make the load's value stale (rule 3).
    pub(crate) fn join_valid(&self, token: FillToken) -> bool {
        let s = self.lock(token.stripe);
        self.epoch.load(Ordering::Acquire) == token.epoch
            && s.bare_gen == token.bare_gen
            && s.writes == token.writes
    }

    /// `key` changed in a way we cannot order: drop it whatever its version.
    pub(crate) fn apply_bare(&self, key: &str) {
        let mut s = self.lock(Self::stripe_of(key));
        s.bare_gen = s.bare_gen.wrapping_add(1);
        self.l1.invalidate(key);
    }

    /// The highest version this node has applied, committed or read.
    pub(crate) fn highest_version(&self) -> u64 {
        (0..STRIPES)
            .map(|i| self.lock(i).max_version)
            .max()
            .unwrap_or(0)
    }

    /// Drops all of L1 and every fill in flight.
    pub(crate) fn purge(&self) {
        self.void_fills(true);
        Counters::inc(&self.counters.purges);
    }

    /// Voids every fill in flight (their tokens no longer match), and with
    /// `clear` empties L1 too.
    fn void_fills(&self, clear: bool) {
        // All stripe locks, in index order (so two purges cannot deadlock):
        // no fill can slip an entry in between the epoch bump and the clear.
        let guards: Vec<_> = (0..STRIPES).map(|i| self.lock(i)).collect();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if clear {
            self.l1.invalidate_all();
        }
        drop(guards);
    }

    /// The listener lost its connection, and the change log will tell what
    /// it missed (see `crate::postgres::warm_reconnect`): stop using L1 and void the fills in
    /// flight, but keep the entries for [`resume`](Self::resume).
    pub(crate) fn suspend(&self) {
        self.enabled.store(false, Ordering::Release);
        self.void_fills(false);
    }

    /// LISTEN is back and the change log was replayed: drop the keys changed
    /// while this node was not listening, void the fills in flight (they may
    /// have read before a change it only learns of now), and use L1 again.
    pub(crate) fn resume(&self, changed: &[String]) {
        for key in changed {
            self.apply_bare(key);
        }
        self.void_fills(false);
        self.enabled.store(self.l1_configured, Ordering::Release);
    }

    /// The listener lost (or has not yet got) its connection: stop using L1.
    pub(crate) fn disable(&self) {
        self.enabled.store(false, Ordering::Release);
        self.purge();
    }

    /// LISTEN is (again) in effect: purge what may have missed a message, then
    /// start using L1.
    pub(crate) fn enable(&self) {
        self.purge();
        self.enabled.store(self.l1_configured, Ordering::Release);
    }

    pub(crate) fn l1_size(&self) -> (u64, u64) {
        self.l1.run_pending_tasks();
        (self.l1.entry_count(), self.l1.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64) -> L1Entry {
        L1Entry {
            value: Arc::new(version),
            version,
            fresh_until_us: u64::MAX,
            stale_until_us: u64::MAX,
            weight: 8,
        }
    }

    fn engine() -> Coherency {
        let c = Coherency::new(
            1 << 20,
            Default::default(),
            "me".into(),
            Arc::default(),
            Arc::new(crate::telemetry::Metrics::new(
                &opentelemetry::global::meter("c3-test"),
                "t",
            )),
            Arc::new(crate::clock::SystemClock),
        );
        c.enable();
        c
    }

    #[test]
    fn versioned_invalidation_keeps_newer() {
        let c = engine();
        let t = c.fill_token("k").unwrap();
        assert!(c.fill("k", t, entry(5)));
        c.apply_written("k", 5);
        assert!(c.peek("k").is_some(), "own notification must not evict");
        c.apply_written("k", 4);
        assert!(c.peek("k").is_some(), "late notification must not evict");
        c.apply_written("k", 6);
        assert!(c.peek("k").is_none());
    }

    #[test]
    fn invalidation_during_read_drops_fill() {
        let c = engine();
        let t = c.fill_token("k").unwrap();
        c.apply_bare("k");
        assert!(!c.fill("k", t, entry(1)));
        let t = c.fill_token("k").unwrap();
        c.apply_written("k", 9);
        assert!(
            !c.fill("k", t, entry(8)),
            "read an older version than committed"
        );
        let t = c.fill_token("k").unwrap();
        c.apply_written("k", 10);
        assert!(c.fill("k", t, entry(10)), "read already saw that write");
        let t = c.fill_token("k").unwrap();
        c.purge();
        assert!(!c.fill("k", t, entry(11)));
    }

    /// Commits arrive in commit order, not version order: a stripe's
    /// highest version can already be above the write that makes a read
    /// stale. The relay's history checker found this (a read filling L1 with
    /// the value before a write whose message had just been applied).
    /// Another key on `key`'s stripe.
    fn stripe_mate(key: &str) -> String {
        (0..10_000)
            .map(|i| format!("other{i}"))
            .find(|k| Coherency::stripe_of(k) == Coherency::stripe_of(key) && k != key)
            .expect("a key sharing the stripe")
    }

    #[test]
    fn a_write_below_the_stripes_highest_version_still_drops_an_older_fill() {
        let c = engine();
        let other = stripe_mate("k");
        // Another key of the stripe committed later with a higher version,
        // and its message came first.
        c.apply_written(&other, 110);
        let t = c.fill_token("k").unwrap();
        // The read returned k at version 100; then k's write at 105 lands.
        c.apply_written("k", 105);
        assert!(
            !c.fill("k", t, entry(100)),
            "kept a value older than an applied write"
        );
        // A write at or below the version read does not make it stale.
        let t = c.fill_token("k").unwrap();
        c.apply_written("k", 100);
        assert!(c.fill("k", t, entry(100)));
        // Many writes below the value's version (a batch of its own): kept.
        let t = c.fill_token("k").unwrap();
        for v in 111..200 {
            c.apply_written(&other, v);
        }
        assert!(c.fill("k", t, entry(200)));
        // More out-of-order versions than the stripe tracks: dropped, to be safe.
        let t = c.fill_token("k").unwrap();
        for v in (300..300 + 2 * SUFFIX as u64).rev() {
            c.apply_written(&other, v);
        }
        assert!(!c.fill("k", t, entry(1_000)));
    }

    #[test]
    fn a_write_below_the_stripes_highest_version_ends_joins_of_an_older_load() {
        let c = engine();
        let other = stripe_mate("k");
        c.apply_written(&other, 110);
        // A load of k starts (its value: k before the write below).
        let join = c.join_token("k");
        let fill = c.fill_token("k").unwrap();
        assert!(c.join_valid(join) && c.token_valid("k", fill));
        // k's write at 105 — below the stripe's highest — is applied.
        c.apply_written("k", 105);
        assert!(
            !c.join_valid(join),
            "a caller could join a load older than an applied write"
        );
        // The load's own value, had it been stored, would not be kept either.
        assert!(!c.fill("k", fill, entry(100)));
    }

    #[test]
    fn disabled_bypasses() {
        let c = engine();
        let t = c.fill_token("k").unwrap();
        assert!(c.fill("k", t, entry(1)));
        c.disable();
        assert!(c.peek("k").is_none());
        assert!(c.fill_token("k").is_none());
        assert!(!c.fill("k", t, entry(2)));
        c.enable();
        assert!(c.peek("k").is_none());
    }

    /// The second purge: whatever reached L1 while the node was not
    /// listening is gone once it listens again. A direct insert stands for a
    /// writer that passed its `enabled` check just before `disable` (the
    /// paths that insert check it under their stripe lock, which `purge`
    /// also takes, but the rule must not depend on each of them getting it
    /// right): it may hold a value an invalidation missed during the outage.
    #[test]
    fn listening_again_purges_what_reached_l1_meanwhile() {
        let c = engine();
        c.disable();
        c.l1.insert("k".into(), entry(3));
        let purges = c.counters.purges.load(Ordering::Relaxed);
        c.enable();
        assert!(
            c.peek("k").is_none(),
            "an entry from the outage survived enable()"
        );
        assert_eq!(c.counters.purges.load(Ordering::Relaxed), purges + 1);
    }

    #[test]
    fn older_fill_does_not_replace_newer() {
        let c = engine();
        let t1 = c.fill_token("k").unwrap();
        let t2 = c.fill_token("k").unwrap();
        assert!(c.fill("k", t2, entry(7)));
        assert!(!c.fill("k", t1, entry(6)));
        assert_eq!(c.peek("k").unwrap().version, 7);
    }
}
