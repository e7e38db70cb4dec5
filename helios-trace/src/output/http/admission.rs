//! Which connections the exporter keeps (ARCHITECTURE.md, "Contracts: HTTP"): at most
//! `max_per_client` from one client address and `max_total` in all, the total far above what one
//! client may hold. When the total is reached, a new connection takes the place of one that has
//! not yet sent a whole request (idle or trickling), taken from the client holding the most
//! connections, oldest first, if that client holds at least two more than the new one's client
//! holds idle (clients holding idle connections even out rather than cut each other's in turn;
//! a scraper's previous connection, still serving or closing, does not count); connections serving
//! a request are never cut for another. So a client holding idle connections, from however many
//! addresses, cannot keep a scraper out: the scraper holds one connection per scrape, and a new
//! one cuts an idle one.
//!
//! Pure bookkeeping: the server (http.rs) calls it under a lock and acts on what it says.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

/// Why a new connection is closed unanswered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its client already holds `max_per_client` connections.
    ClientLimit,
    /// `max_total` connections are open and every one is serving a request.
    TotalLimit,
}

/// A connection let in; `cut` is the one it replaces (its handle, to close it), if any.
#[derive(Debug)]
pub(crate) struct Admitted<T> {
    pub(crate) id: u64,
    pub(crate) cut: Option<T>,
}

#[derive(Debug)]
struct Open<T> {
    client: IpAddr,
    /// A whole request arrived: serving it, never cut for another connection.
    requested: bool,
    handle: T,
}

/// The open connections, by age (ids grow), and how many each client holds.
#[derive(Debug)]
pub(crate) struct Admission<T> {
    max_total: usize,
    max_per_client: usize,
    next_id: u64,
    open: BTreeMap<u64, Open<T>>,
    per_client: HashMap<IpAddr, usize>,
}

impl<T> Admission<T> {
    pub(crate) fn new(max_total: usize, max_per_client: usize) -> Admission<T> {
        Admission { max_total, max_per_client, next_id: 0, open: BTreeMap::new(), per_client: HashMap::new() }
    }

    /// Let a connection from `client` in, or say why not; `handle` closes it when it is cut.
    pub(crate) fn admit(&mut self, client: IpAddr, handle: T) -> Result<Admitted<T>, Refusal> {
        if self.per_client.get(&client).copied().unwrap_or(0) >= self.max_per_client {
            return Err(Refusal::ClientLimit);
        }
        let mut cut = None;
        if self.open.len() >= self.max_total {
            // Only for a client holding fewer idle connections than the victim's client holds
            // connections: clients holding idle connections even out instead of cutting each
            // other's in turn. Its connections serving a request do not count: a scraper's last
            // scrape, answered but not yet closed on our side, must not keep its next one out.
            let held = self.open.values().filter(|o| o.client == client && !o.requested).count();
            let victim =
                self.idle_victim().filter(|&(most, _)| most > held + 1).ok_or(Refusal::TotalLimit)?;
            cut = self.closed(victim.1);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(id, Open { client, requested: false, handle });
        *self.per_client.entry(client).or_insert(0) += 1;
        Ok(Admitted { id, cut })
    }

    /// The connection has sent a whole request: it is served, not cut for another.
    pub(crate) fn requested(&mut self, id: u64) {
        if let Some(open) = self.open.get_mut(&id) {
            open.requested = true;
        }
    }

    /// The connection is gone (closed, timed out or cut): its handle, if it was still open.
    pub(crate) fn closed(&mut self, id: u64) -> Option<T> {
        let open = self.open.remove(&id)?;
        if let Some(count) = self.per_client.get_mut(&open.client) {
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(&open.client);
            }
        }
        Some(open.handle)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    /// The idle connection to cut: of the client holding the most connections, its oldest;
    /// with how many that client holds.
    fn idle_victim(&self) -> Option<(usize, u64)> {
        let mut best: Option<(usize, u64)> = None;
        for (&id, open) in &self.open {
            if open.requested {
                continue;
            }
            let held = self.per_client.get(&open.client).copied().unwrap_or(0);
            // Strictly more: among a client's connections, the first seen (oldest) stays chosen.
            if best.is_none_or(|(most, _)| held > most) {
                best = Some((held, id));
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_client_is_held_to_its_own_limit() {
        let mut admission = Admission::new(100, 3);
        for n in 0..3 {
            admission.admit(ip(2), n).unwrap();
        }
        assert_eq!(admission.admit(ip(2), 9).unwrap_err(), Refusal::ClientLimit);
        let other = admission.admit(ip(1), 10).unwrap();
        assert!(other.cut.is_none());
        assert_eq!(admission.len(), 4);
    }

    #[test]
    fn when_full_a_new_connection_cuts_the_busiest_clients_oldest_idle_one() {
        let mut admission = Admission::new(6, 4);
        let a: Vec<u64> = (0..4).map(|n| admission.admit(ip(2), n).unwrap().id).collect();
        let b = admission.admit(ip(3), 10).unwrap().id;
        admission.admit(ip(4), 20).unwrap();
        // ip(2)'s oldest is serving a request: its next oldest is cut.
        admission.requested(a[0]);
        let scraper = admission.admit(ip(1), 30).unwrap();
        assert_eq!(scraper.cut, Some(1));
        assert_eq!(admission.len(), 6);
        // Now ip(2) holds 3 (one serving), ip(3) and ip(4) one each: ip(2) again.
        assert_eq!(admission.admit(ip(5), 40).unwrap().cut, Some(2));
        // ip(2) still holds the most (2): its last idle one.
        assert_eq!(admission.admit(ip(6), 50).unwrap().cut, Some(3));
        // Every client holds one now: a second from any of them would only move a slot.
        assert_eq!(admission.admit(ip(6), 60).unwrap_err(), Refusal::TotalLimit);
        assert_eq!(admission.closed(b), Some(10));
        assert_eq!(admission.closed(b), None, "closed once");
    }

    #[test]
    fn connections_serving_requests_are_never_cut() {
        let mut admission = Admission::new(2, 2);
        let first = admission.admit(ip(2), 0).unwrap().id;
        let second = admission.admit(ip(2), 1).unwrap().id;
        admission.requested(first);
        admission.requested(second);
        assert_eq!(admission.admit(ip(1), 2).unwrap_err(), Refusal::TotalLimit);
        admission.closed(first);
        assert!(admission.admit(ip(1), 3).unwrap().cut.is_none());
        // Counts per client follow closes: ip(2) may open one again.
        admission.closed(second);
        assert!(admission.admit(ip(2), 4).is_ok());
    }

    #[test]
    fn a_scrapers_connection_still_serving_does_not_keep_its_next_one_out() {
        // Full of idle connections, 2 from each of three clients; the scraper's first scrape cut
        // one and is answered, but its connection is not closed on our side yet.
        let mut admission = Admission::new(6, 2);
        for last in 2..=4 {
            admission.admit(ip(last), 0).unwrap();
            admission.admit(ip(last), 1).unwrap();
        }
        let first = admission.admit(ip(1), 10).unwrap();
        assert!(first.cut.is_some());
        admission.requested(first.id);
        // Its next scrape gets in all the same, cutting another idle one.
        let second = admission.admit(ip(1), 11).unwrap();
        assert!(second.cut.is_some());
    }
}
