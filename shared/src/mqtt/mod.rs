//! MQTT 3.1.1 / 5.0: packet model, codec, topic rules and reason codes.

pub mod codec;
pub mod packet;
pub mod reason;
pub mod topic;
