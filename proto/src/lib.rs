//! The generated gRPC code for every grpc-chat contract. Services, the CLI and the tests
//! import message types from here and never redeclare them.

pub mod auth {
    #[allow(clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("grpcchat.auth.v1");
    }
}
pub mod chat {
    #[allow(clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("grpcchat.chat.v1");
    }
}
pub mod notification {
    #[allow(clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("grpcchat.notification.v1");
    }
}
pub mod saga {
    #[allow(clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("grpcchat.saga.v1");
    }
}

/// The encoded `FileDescriptorSet` of every contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("grpcchat_descriptor");
