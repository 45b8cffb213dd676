//! The L7 stage's drop reasons (the block of ids after the L4 forwarder's; see [`xlb_stack::drops`]). Import
//! [`L7Drops`] to name them as `DropReason::L7ConnectionLimit`.

use xlb_l4::drops::L4_DROPS;
use xlb_stack::drop_reasons;

drop_reasons! {
    /// The L7 stage's drop reasons: the block of ids after the L4 forwarder's.
    pub table L7_DROPS = "l7", first L4_DROPS.end();
    /// The L7 stage's drop reasons, as associated constants of [`xlb_stack::drops::DropReason`].
    pub trait L7Drops;
    L7ConnectionLimit => "l7_connection_limit": "SYN to an HTTP listener refused at l7.max_connections (answered with RST).",
}
