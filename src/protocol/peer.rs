//! Pushi's peer channels: two members of `presence-<base>` who joined with
//! `"peer": true` share the private pair channel `peer-<base>:<a>&<b>`,
//! created when the second joins and ended when either leaves.

/// `peer-<base>:<a>&<b>` with the two user ids in code-point order.
pub fn pair_name(base: &str, a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("peer-{base}:{x}&{y}")
}

/// Whether a user id can be half of a pair channel name: `&` separates the
/// pair and `:` the base, so ids holding them would make names ambiguous.
pub fn peer_safe(user_id: &str) -> bool {
    !user_id.is_empty() && !user_id.contains(['&', ':'])
}
