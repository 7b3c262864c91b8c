//! `notification-service` consumes chat events and serves NotificationService;
//! `notification-service migrate` only applies the migrations.
chat_common::service_main!("notification-service", notification_service);
