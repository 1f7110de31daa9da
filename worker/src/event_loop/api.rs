//! The JSON API's requests in the loop: routed by [`proto::api`](crate::proto::api), then run
//! as a push or a query whose completion answers.

use super::query::QReply;
use super::Worker;
use crate::conn::Proto;
use crate::mesh::{ReplyKind, ReplyTo};
use crate::proto::api::{route, ApiCall};
use crate::proto::http::Request;

impl Worker {
    /// A request under `/api/`: answered now (an error) or when its push or query completes.
    pub(super) fn api_request(&mut self, slot: usize, id: u64, req: &Request) {
        let max = self.cfg.max_targets;
        match route(&req.method, &req.path, &req.query, &req.body, max) {
            Ok(ApiCall::Query(q)) => {
                self.query(q, QReply::Answer(crate::render::To::Http { slot, id }))
            }
            Ok(ApiCall::Push(p)) => {
                if let Some(Proto::Http(h)) = self.conns.get_mut(slot).map(|c| &mut c.proto) {
                    h.waiting = true;
                }
                let reply = ReplyTo::Http {
                    slot,
                    id,
                    kind: ReplyKind::Count,
                };
                self.push(p.target.into(), p.exclude, &p.payload, p.binary, reply);
            }
            Err(e) => self.http_json(slot, id, e.status, &e.body, e.allow),
        }
    }
}
