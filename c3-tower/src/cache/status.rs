//! [`CacheStatus`]: how the cache handled a request, as an RFC 9211
//! `Cache-Status` field value (`c3; hit; ttl=42; detail=l1`).

use std::cell::RefCell;
use std::hash::{BuildHasherDefault, DefaultHasher};

use http::HeaderValue;
use http::header::HeaderName;

/// RFC 9211 `Cache-Status`.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a request went to the origin (RFC 9211 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Fwd {
    /// The cache was not used for this request (policy, method, key).
    Bypass,
    /// A method the cache forwards (and, if unsafe, invalidates after).
    Method,
    /// Nothing stored for the URI.
    UriMiss,
    /// The URI varies, and nothing stored for this request's variant.
    VaryMiss,
    /// A stored response had to be validated.
    Stale,
    /// Nothing stored could answer (an `only-if-cached` request's 504).
    Miss,
}

impl Fwd {
    fn as_str(self) -> &'static str {
        match self {
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Miss => "miss",
        }
    }
}

/// One `Cache-Status` member for c3, built up as the request is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CacheStatus {
    fwd: Option<Fwd>,
    fwd_status: Option<u16>,
    ttl: Option<i64>,
    detail: Option<&'static str>,
    stored: bool,
}

impl CacheStatus {
    /// Answered from the cache.
    pub(crate) fn hit() -> Self {
        CacheStatus {
            fwd: None,
            fwd_status: None,
            ttl: None,
            detail: None,
            stored: false,
        }
    }

    /// Forwarded to the origin, for `reason`.
    pub(crate) fn fwd(reason: Fwd) -> Self {
        CacheStatus {
            fwd: Some(reason),
            ..Self::hit()
        }
    }

    pub(crate) fn fwd_status(mut self, status: u16) -> Self {
        self.fwd_status = Some(status);
        self
    }

    pub(crate) fn ttl(mut self, ttl: i64) -> Self {
        self.ttl = Some(ttl);
        self
    }

    pub(crate) fn detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The response is being stored.
    pub(crate) fn stored(mut self) -> Self {
        self.stored = true;
        self
    }

    /// The field value. A thread keeps the last values it made (a hit's
    /// `ttl` changes once a second), so most answers reuse one instead of
    /// formatting and allocating it again.
    pub(crate) fn header_value(&self) -> HeaderValue {
        use std::hash::BuildHasher;
        const SLOTS: usize = 64;
        thread_local! {
            static MADE: RefCell<[Option<(CacheStatus, HeaderValue)>; SLOTS]> =
                const { RefCell::new([const { None }; SLOTS]) };
        }
        // Fixed keys: the slot only spreads the statuses; nothing is keyed
        // by input an attacker chooses beyond a number of seconds.
        let slot = (BuildHasherDefault::<DefaultHasher>::default().hash_one(self) as usize) % SLOTS;
        MADE.try_with(|made| {
            let mut made = made.borrow_mut();
            if let Some((status, value)) = &made[slot]
                && status == self
            {
                return value.clone();
            }
            let value = self.render();
            made[slot] = Some((*self, value.clone()));
            value
        })
        .unwrap_or_else(|_| self.render())
    }

    fn render(&self) -> HeaderValue {
        use std::fmt::Write;
        let mut s = String::from("c3");
        match self.fwd {
            None => s.push_str("; hit"),
            Some(f) => {
                let _ = write!(s, "; fwd={}", f.as_str());
            }
        }
        if let Some(st) = self.fwd_status {
            let _ = write!(s, "; fwd-status={st}");
        }
        if let Some(t) = self.ttl {
            let _ = write!(s, "; ttl={t}");
        }
        if let Some(d) = self.detail {
            let _ = write!(s, "; detail={d}");
        }
        if self.stored {
            s.push_str("; stored");
        }
        // Only visible ASCII went in.
        HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("c3"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_in_rfc_9211_order() {
        let s = CacheStatus::hit().ttl(42).detail("l1");
        assert_eq!(s.header_value(), "c3; hit; ttl=42; detail=l1");
        let s = CacheStatus::fwd(Fwd::Stale).fwd_status(200).stored();
        assert_eq!(s.header_value(), "c3; fwd=stale; fwd-status=200; stored");
        let s = CacheStatus::fwd(Fwd::Bypass).detail("authorization");
        assert_eq!(s.header_value(), "c3; fwd=bypass; detail=authorization");
    }
}
