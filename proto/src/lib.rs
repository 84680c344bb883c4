#![doc = include_str!("../README.md")]
#![allow(
    missing_debug_implementations,
    unused_qualifications,
    clippy::large_futures,
    reason = "generated code"
)]

pub mod codec;

/// The packages as prost lays them out (a package's code refers to another's by `super::`).
pub mod chamberlain {
    /// `chamberlain.v1`: the API's messages, clients (`*_client`) and servers (`*_server`).
    pub mod v1 {
        tonic::include_proto!("chamberlain.v1");
    }
}

/// The `google.api` HTTP annotations the API's methods carry, and `HttpBody` (a download's
/// body).
pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

pub use chamberlain::v1;
pub use google::api as google_api;

/// The API's serialized `FileDescriptorSet`, imports included: for gRPC reflection, and the
/// descriptor file Envoy's JSON transcoder loads (`chamberlain descriptor-set`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("chamberlain_descriptor");

/// The fully-qualified names of the API's services, as Envoy's transcoder lists them.
pub const SERVICES: [&str; 10] = [
    "chamberlain.v1.SectionService",
    "chamberlain.v1.ChamberService",
    "chamberlain.v1.BatchService",
    "chamberlain.v1.ReadingService",
    "chamberlain.v1.PollService",
    "chamberlain.v1.AuthService",
    "chamberlain.v1.UserService",
    "chamberlain.v1.EventService",
    "chamberlain.v1.AlertService",
    "chamberlain.v1.TransmitterService",
];
