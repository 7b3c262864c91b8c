//! The chat events contract, owned in one place: what chat-service publishes and what its
//! replicas and the notifier consume.
//!
//! Publisher and consumers must agree on the event type and its bytes ([`ChatEvent`],
//! `event.rs`), on the subjects (`subject.rs`), on the JetStream stream that keeps the
//! events (`stream.rs`, created alike by whichever service starts first) and on the
//! trace context an event carries ([`Envelope`], [`process_span`]). Before this crate the
//! notifier compiled all of chat-service to read them; now both depend on this small crate
//! and neither on the other.
//!
//! The buses live here too ([`EventBus`], with [`NatsBus`] between processes and
//! [`LocalBus`] inside one): the in-process bus's tap is the notifier's event source in
//! the all-in-one server, so its [`Envelope`] and [`Handled`] must be types the notifier
//! can name. chat-service's hub is the only publisher and subscriber of a bus.

#![warn(missing_docs)]

pub mod bus;
pub mod envelope;
pub mod event;
pub mod live;
pub mod local;
pub mod nats;
pub mod stream;
pub mod subject;

pub use bus::EventBus;
pub use envelope::{process_span, Envelope, EventStream, Handled};
pub use event::{ChatEvent, MEMBERS_VERSION_HEADER};
pub use live::LiveEvent;
pub use local::{LocalBus, TAP_CAPACITY};
pub use nats::NatsBus;
pub use stream::StreamSettings;
