//! `chat-service` serves ChatService; `chat-service migrate` only applies the migrations.
chat_common::service_main!("chat-service", chat_service);
