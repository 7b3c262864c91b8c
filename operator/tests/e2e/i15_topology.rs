//! Issue 15, the production topology: what the operator renders for a production
//! cluster, checked against a real API server (and, for other projects' kinds, their real
//! CRDs from `../shared/k8s-testenv/crds/`).

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{ConfigMap, Service},
    networking::v1::NetworkPolicy,
};
use kube::{
    api::{Api, DynamicObject, Patch, PatchParams},
    ResourceExt,
};
use serde_json::json;

use crate::support::*;

/// `NATS_STREAM_REPLICAS` of a component's Deployment, once it exists.
async fn stream_replicas(w: &World, deployment: &str) -> Option<String> {
    let d = w.deployment(deployment).await?;
    env_of(&d, "NATS_STREAM_REPLICAS")?["value"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn i15_stream_replicas_follow_nats_replicas() {
    if !enabled("issue 15: stream replicas") {
        return;
    }
    let w = World::new(Plane::shared(), "i15-stream").await;
    let spec = json!({"version": "1.0.0", "nats": {"managed": {"replicas": 1, "storage": "2Gi"}}});
    w.apply_cluster("js", spec).await;
    w.complete_migrations("js", 4).await;
    for c in ["chat", "notification"] {
        let name = format!("js-{c}");
        let replicas = eventually(&format!("{name}'s stream replicas"), SETTLE, || async {
            stream_replicas(&w, &name).await
        })
        .await;
        assert_eq!(replicas, "1", "{name}");
    }
    // The server's store is bounded by its volume, and it leaves in lame-duck mode.
    let conf = w
        .api::<ConfigMap>()
        .get("js-nats")
        .await
        .expect("NATS config");
    let conf = &conf.data.expect("data")["nats.conf"];
    assert!(conf.contains("max_file_store: 1932735283"), "{conf}");
    let sts = w.api::<StatefulSet>().get("js-nats").await.expect("NATS");
    let sts = serde_json::to_value(&sts).expect("json");
    let hook = &sts["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"];
    assert!(hook.to_string().contains("ldm="), "{hook}");

    // Growing NATS to a cluster gives the stream three copies (not five).
    w.patch_spec("js", json!({"nats": {"managed": {"replicas": 5}}}))
        .await;
    for c in ["chat", "notification"] {
        let name = format!("js-{c}");
        eventually(
            &format!("{name}'s stream replicas to be 3"),
            SETTLE,
            || async { (stream_replicas(&w, &name).await.as_deref() == Some("3")).then_some(()) },
        )
        .await;
    }
}

/// `spec.replicas` of Deployment `name`.
async fn deployment_replicas(w: &World, name: &str) -> Option<i32> {
    w.deployment(name).await?.spec?.replicas
}

#[tokio::test]
async fn i15_an_autoscaled_component_is_not_fought() {
    if !enabled("issue 15: autoscaling") {
        return;
    }
    let w = World::new(Plane::shared(), "i15-hpa").await;
    let cpu = json!({"requests": {"cpu": "100m"}});
    w.bring_up(
        "as",
        json!({"version": "1.0.0", "chat": {"replicas": 3, "resources": cpu}}),
    )
    .await;
    assert_eq!(deployment_replicas(&w, "as-chat").await, Some(3));

    // Autoscaling switched on: an HPA, and the pods running now are kept (the Deployment
    // does not fall back to one pod when the operator stops applying `replicas`).
    w.patch_spec(
        "as",
        json!({"chat": {"autoscaling": {"minReplicas": 2, "maxReplicas": 6}}}),
    )
    .await;
    let hpa = eventually("HorizontalPodAutoscaler as-chat", SETTLE, || async {
        w.api::<HorizontalPodAutoscaler>()
            .get_opt("as-chat")
            .await
            .expect("reading the HPA")
    })
    .await;
    let spec = hpa.spec.expect("HPA spec");
    assert_eq!(spec.scale_target_ref.name, "as-chat");
    assert_eq!(spec.min_replicas, Some(2));
    assert_eq!(spec.max_replicas, 6);
    let target = &spec.metrics.expect("metrics")[0]
        .resource
        .clone()
        .expect("a resource metric");
    assert_eq!(target.name, "cpu");
    assert_eq!(target.target.average_utilization, Some(75));
    w.settle(Duration::from_secs(2)).await;
    assert_eq!(deployment_replicas(&w, "as-chat").await, Some(3));

    // The HPA scales (through the scale subresource, as its controller does) ...
    w.api::<Deployment>()
        .patch_scale(
            "as-chat",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("scaling as the HPA does");
    // ... and later reconciles, including ones that change the chat Deployment, keep it.
    w.patch_spec(
        "as",
        json!({"auth": {"replicas": 3}, "chat": {"resources": {"requests": {"cpu": "200m"}}}}),
    )
    .await;
    eventually("auth at 3 replicas", SETTLE, || async {
        (deployment_replicas(&w, "as-auth").await == Some(3)).then_some(())
    })
    .await;
    eventually("the chat pods' new CPU request", SETTLE, || async {
        let d = w.deployment("as-chat").await?;
        let cpu = serde_json::to_value(&d).ok()?["spec"]["template"]["spec"]["containers"][0]
            ["resources"]["requests"]["cpu"]
            .clone();
        (cpu == "200m").then_some(())
    })
    .await;
    w.settle(Duration::from_secs(2)).await;
    assert_eq!(
        deployment_replicas(&w, "as-chat").await,
        Some(5),
        "the operator undid the HPA's scaling"
    );

    // Switched off again: the HPA goes and the spec's count applies.
    w.patch_spec("as", json!({"chat": {"autoscaling": null}}))
        .await;
    eventually("the HPA to be deleted", SETTLE, || async {
        w.api::<HorizontalPodAutoscaler>()
            .get_opt("as-chat")
            .await
            .expect("reading the HPA")
            .is_none()
            .then_some(())
    })
    .await;
    eventually("chat back at 3 replicas", SETTLE, || async {
        (deployment_replicas(&w, "as-chat").await == Some(3)).then_some(())
    })
    .await;
}

/// The peers of the ingress rules of NetworkPolicy `name` allowed to `port`.
fn peers_to(policy: &NetworkPolicy, port: i32) -> Vec<serde_json::Value> {
    let spec = policy.spec.as_ref().expect("a NetworkPolicy spec");
    spec.ingress
        .iter()
        .flatten()
        .filter(|rule| {
            rule.ports.iter().flatten().any(|p| {
                p.port == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port))
            })
        })
        .flat_map(|rule| rule.from.clone().unwrap_or_default())
        .map(|peer| serde_json::to_value(peer).expect("json"))
        .collect()
}

#[tokio::test]
async fn i15_network_policies_let_only_what_needs_it_through() {
    if !enabled("issue 15: network policies") {
        return;
    }
    let w = World::new(Plane::shared(), "i15-netpol").await;
    let gateway = json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway-system"}}});
    w.apply_cluster(
        "np",
        json!({"version": "1.0.0", "networkPolicy": {"entryPointFrom": [gateway]}}),
    )
    .await;
    let api = w.api::<NetworkPolicy>();
    let get = |name: &'static str| {
        let api = api.clone();
        async move {
            eventually(&format!("NetworkPolicy {name}"), SETTLE, || async {
                api.get_opt(name).await.expect("reading a NetworkPolicy")
            })
            .await
        }
    };
    let components = |peer: &serde_json::Value| -> Vec<String> {
        assert_eq!(
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"], "np",
            "{peer}"
        );
        assert!(
            peer.get("namespaceSelector").is_none(),
            "only this namespace: {peer}"
        );
        let mut v: Vec<String> =
            serde_json::from_value(peer["podSelector"]["matchExpressions"][0]["values"].clone())
                .expect("component values");
        v.sort();
        v
    };

    // PostgreSQL: from the services and their migrations only.
    let pg = get("np-postgres").await;
    let from = peers_to(&pg, 5432);
    assert_eq!(from.len(), 1, "{from:?}");
    let mut expected: Vec<String> = ["auth", "chat", "notification", "saga"]
        .iter()
        .flat_map(|c| [c.to_string(), format!("{c}-migrate")])
        .chain(["postgres-roles".to_string()])
        .collect();
    expected.sort();
    assert_eq!(components(&from[0]), expected);
    let selected = serde_json::to_value(&pg.spec.as_ref().unwrap().pod_selector).unwrap();
    assert_eq!(
        selected["matchExpressions"][0]["values"],
        json!(["postgres"]),
        "{selected}"
    );

    // NATS clients: chat and notification only; routes from NATS itself.
    let nats = get("np-nats").await;
    let from = peers_to(&nats, 4222);
    assert_eq!(from.len(), 1, "{from:?}");
    assert_eq!(components(&from[0]), ["chat", "notification"]);
    assert_eq!(components(&peers_to(&nats, 6222)[0]), ["nats"]);

    // The public services' gRPC port from the entry point; notification is not public.
    let public = get("np-public").await;
    assert_eq!(peers_to(&public, 50051), [gateway]);
    let selected = serde_json::to_value(&public.spec.as_ref().unwrap().pod_selector).unwrap();
    assert_eq!(
        selected["matchExpressions"][0]["values"],
        json!(["auth", "chat", "saga"])
    );
    // Between the services: gRPC from each other.
    let services = get("np-services").await;
    assert_eq!(
        components(&peers_to(&services, 50051)[0]),
        ["auth", "chat", "notification", "saga"]
    );

    // Removed from the spec: the policies go.
    w.patch_spec("np", json!({"networkPolicy": null})).await;
    eventually("the NetworkPolicies to be deleted", SETTLE, || async {
        let left = api
            .list(&Default::default())
            .await
            .expect("listing NetworkPolicies")
            .items;
        left.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn i15_the_pod_monitor_is_accepted_by_the_prometheus_operator_crd() {
    if !enabled("issue 15: PodMonitor") {
        return;
    }
    let w = World::new(Plane::shared(), "i15-podmonitor").await;
    install_crd(w.plane, "monitoring.coreos.com_podmonitors.yaml");
    let spec = json!({"version": "1.0.0",
                      "monitoring": {"podMonitor": true, "labels": {"release": "prometheus"}}});
    w.apply_cluster("pm", spec).await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        w.client.clone(),
        &w.ns,
        &chat_operator::render::pod_monitor_resource(),
    );
    // Applied by the operator and stored as rendered: the CRD's schema prunes what it
    // does not know, so a field it dropped would be missing here.
    let stored = eventually("the PodMonitor", SETTLE, || async {
        api.get_opt("pm-services").await.ok().flatten()
    })
    .await;
    let stored = serde_json::to_value(&stored).expect("json");
    assert_eq!(stored["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        stored["spec"]["podMetricsEndpoints"],
        json!([{"port": "metrics", "path": "/metrics"}])
    );
    assert_eq!(
        stored["spec"]["selector"]["matchExpressions"][0]["values"],
        json!(["auth", "chat", "notification", "saga"])
    );

    // Turned off: the operator deletes it.
    w.patch_spec("pm", json!({"monitoring": {"podMonitor": false}}))
        .await;
    eventually("the PodMonitor to be deleted", SETTLE, || async {
        matches!(api.get_opt("pm-services").await, Ok(None)).then_some(())
    })
    .await;
}

/// A stored object of another project's kind, once it exists.
async fn stored(api: &Api<DynamicObject>, name: &str) -> serde_json::Value {
    let object = eventually(
        &format!("{} {name}", api.resource_url()),
        SETTLE,
        || async { api.get_opt(name).await.ok().flatten() },
    )
    .await;
    serde_json::to_value(&object).expect("json")
}

#[tokio::test]
async fn i15_the_gateway_api_objects_are_accepted_by_the_upstream_crds_and_pruned() {
    if !enabled("issue 15: Gateway API entry point") {
        return;
    }
    let w = World::new(Plane::shared(), "i15-gateway").await;
    install_crd(w.plane, "gateway.networking.k8s.io_gateways.yaml");
    install_crd(w.plane, "gateway.networking.k8s.io_grpcroutes.yaml");
    let gateways: Api<DynamicObject> = Api::namespaced_with(
        w.client.clone(),
        &w.ns,
        &chat_operator::render::gateway_resource(),
    );
    let routes: Api<DynamicObject> = Api::namespaced_with(
        w.client.clone(),
        &w.ns,
        &chat_operator::render::grpc_route_resource(),
    );
    let spec = json!({"version": "1.0.0",
        "gateway": {"host": "chat.example.com", "gatewayClassName": "eg",
                    "tlsSecretName": "chat-tls"}});
    w.apply_cluster("gw", spec).await;

    // Stored as rendered: the CRDs' schemas prune what they do not know, so a field they
    // dropped would be missing here, and their CEL rules would have refused a bad one.
    let gateway = stored(&gateways, "gw").await;
    let listener = &gateway["spec"]["listeners"][0];
    assert_eq!(gateway["spec"]["gatewayClassName"], "eg");
    assert_eq!(listener["protocol"], "HTTPS", "{listener}");
    assert_eq!(listener["port"], 443);
    assert_eq!(listener["hostname"], "chat.example.com");
    assert_eq!(listener["tls"]["mode"], "Terminate");
    assert_eq!(listener["tls"]["certificateRefs"][0]["name"], "chat-tls");
    assert_eq!(listener["allowedRoutes"]["kinds"][0]["kind"], "GRPCRoute");
    for (component, service) in [
        ("auth", "grpcchat.auth.v1.AuthService"),
        ("chat", "grpcchat.chat.v1.ChatService"),
        ("saga", "grpcchat.saga.v1.SagaOrchestrator"),
    ] {
        let route = stored(&routes, &format!("gw-{component}")).await;
        let spec = &route["spec"];
        assert_eq!(spec["hostnames"], json!(["chat.example.com"]), "{route}");
        assert_eq!(spec["parentRefs"][0]["name"], "gw");
        assert_eq!(spec["parentRefs"][0]["sectionName"], "grpc");
        let rule = &spec["rules"][0];
        assert_eq!(rule["matches"][0]["method"]["service"], service, "{rule}");
        assert_eq!(rule["matches"][0]["method"]["type"], "Exact");
        assert_eq!(rule["backendRefs"][0]["name"], format!("gw-{component}"));
        assert_eq!(rule["backendRefs"][0]["port"], 50051);
    }
    assert!(
        matches!(routes.get_opt("gw-notification").await, Ok(None)),
        "notification is not public"
    );
    let c = w
        .wait_for("gw", "the endpoint", |c| {
            c.status.as_ref().and_then(|s| s.endpoint.clone()).is_some()
        })
        .await;
    assert_eq!(
        c.status.as_ref().and_then(|s| s.endpoint.as_deref()),
        Some("chat.example.com:443")
    );
    assert_ne!(
        condition_of(&c, "Degraded").map(|d| d.status.as_str()),
        Some("True"),
        "{}",
        degraded_message(&c)
    );

    // The Gateway implementation (played) refuses a route: the endpoint does not work,
    // and the status says why, in its words.
    routes
        .patch_status(
            "gw-auth",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"parents": [{
                "parentRef": {"name": "gw", "sectionName": "grpc"},
                "controllerName": "example.com/gateway-controller",
                "conditions": [{"type": "Accepted", "status": "False",
                                "reason": "NotAllowedByListeners",
                                "message": "the listener does not allow this namespace",
                                "lastTransitionTime": now()}],
            }]}})),
        )
        .await
        .expect("a route status, as a Gateway implementation writes it");
    let c = w
        .wait_condition("gw", "Degraded", "True", "RouteNotAccepted")
        .await;
    assert!(
        degraded_message(&c).contains("GRPCRoute gw-auth is not accepted by Gateway gw"),
        "{}",
        degraded_message(&c)
    );

    // Attached to the platform's Gateway instead: the operator's own Gateway goes.
    w.patch_spec(
        "gw",
        json!({"gateway": {"gatewayClassName": null, "tlsSecretName": null,
                           "parentRef": {"name": "public", "namespace": "infra",
                                         "sectionName": "https"}}}),
    )
    .await;
    eventually("the rendered Gateway to be deleted", SETTLE, || async {
        matches!(gateways.get_opt("gw").await, Ok(None)).then_some(())
    })
    .await;
    let route = eventually("the routes to follow the parentRef", SETTLE, || async {
        let r = serde_json::to_value(routes.get("gw-chat").await.ok()?).ok()?;
        (r["spec"]["parentRefs"][0]["name"] == "public").then_some(r)
    })
    .await;
    assert_eq!(route["spec"]["parentRefs"][0]["namespace"], "infra");
    assert_eq!(route["spec"]["parentRefs"][0]["sectionName"], "https");

    // Another entry point: the routes go.
    w.patch_spec("gw", json!({"gateway": null, "loadBalancer": {}}))
        .await;
    eventually("the GRPCRoutes to be deleted", SETTLE, || async {
        let left = routes.list(&Default::default()).await.ok()?.items;
        left.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn i15_load_balancers_report_their_addresses_and_go_when_turned_off() {
    if !enabled("issue 15: LoadBalancer entry point") {
        return;
    }
    let w = World::new(Plane::shared(), "i15-lb").await;
    w.apply_cluster("lb", json!({"version": "1.0.0", "loadBalancer": {}}))
        .await;
    let services = w.api::<Service>();
    for (component, ip) in [
        ("auth", "192.0.2.10"),
        ("chat", "192.0.2.11"),
        ("saga", "192.0.2.12"),
    ] {
        let name = format!("lb-{component}-public");
        let svc = eventually(&format!("Service {name}"), SETTLE, || async {
            services.get_opt(&name).await.ok().flatten()
        })
        .await;
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(
            spec.selector.expect("selector")["app.kubernetes.io/component"],
            component
        );
        let port = &spec.ports.expect("ports")[0];
        assert_eq!(
            (port.port, port.app_protocol.as_deref()),
            (50051, Some("kubernetes.io/h2c"))
        );
        // Play the cloud's load balancer controller.
        services
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})),
            )
            .await
            .expect("assigning an address");
    }
    let c = w
        .wait_for("lb", "the three addresses", |c| {
            c.status.as_ref().is_some_and(|s| s.endpoints.len() == 3)
        })
        .await;
    let status = c.status.expect("status");
    assert_eq!(status.endpoint.as_deref(), Some("192.0.2.11:50051"));
    assert_eq!(status.endpoints["auth"], "192.0.2.10:50051");
    assert_eq!(status.endpoints["saga"], "192.0.2.12:50051");

    w.patch_spec("lb", json!({"loadBalancer": null})).await;
    eventually(
        "the LoadBalancer Services to be deleted",
        SETTLE,
        || async {
            let left = services.list(&Default::default()).await.ok()?.items;
            let public = left
                .iter()
                .filter(|s| {
                    s.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.ends_with("-public"))
                })
                .count();
            // The cluster's own Services stay.
            (public == 0
                && left
                    .iter()
                    .any(|s| s.metadata.name.as_deref() == Some("lb-chat")))
            .then_some(())
        },
    )
    .await;
    w.wait_for("lb", "no endpoint", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.endpoint.is_none() && s.endpoints.is_empty())
    })
    .await;
}

#[tokio::test]
async fn i15_the_crd_refuses_an_ingress_without_tls_and_two_entry_points() {
    if !enabled("issue 15: entry point validation") {
        return;
    }
    let w = World::bare(Plane::shared(), "i15-entry-validation").await;
    let gateway = json!({"host": "chat.example.com", "gatewayClassName": "eg"});
    for (spec, expected) in [
        (
            json!({"version": "1", "ingress": {"host": "chat.example.com"}}),
            "ingress needs tlsSecretName",
        ),
        (
            json!({"version": "1", "gateway": gateway, "loadBalancer": {}}),
            "at most one entry point",
        ),
        (
            json!({"version": "1", "gateway": {"host": "chat.example.com"}}),
            "exactly one",
        ),
        (
            json!({"version": "1", "gateway": {"host": "chat.example.com",
                   "parentRef": {"name": "public"}, "tlsSecretName": "t"}}),
            "configured on that Gateway's listener",
        ),
    ] {
        let refused = w.dry_run("demo", spec.clone()).expect_err("refused");
        assert!(refused.contains(expected), "{spec}: {refused}");
    }
    for spec in [
        json!({"version": "1", "gateway": gateway}),
        json!({"version": "1", "loadBalancer": {"port": 443}}),
        json!({"version": "1", "ingress": {"host": "chat.example.com", "tlsSecretName": "t"}}),
    ] {
        w.dry_run("demo", spec.clone())
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
    }
}

/// `stored` has everything `expected` has (the API server adds the CRD's defaults).
fn assert_has(stored: &serde_json::Value, expected: &serde_json::Value) {
    match (stored, expected) {
        (serde_json::Value::Object(s), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                let got = s
                    .get(k)
                    .unwrap_or_else(|| panic!("{k} missing from {stored}"));
                assert_has(got, v);
            }
        }
        (serde_json::Value::Array(s), serde_json::Value::Array(e)) => {
            assert_eq!(s.len(), e.len(), "{stored} vs {expected}");
            for (s, e) in s.iter().zip(e) {
                assert_has(s, e);
            }
        }
        _ => assert_eq!(stored, expected),
    }
}

#[tokio::test]
async fn i15_cloud_native_pg_is_a_cluster_the_real_crd_accepts_and_the_services_use_it() {
    if !enabled("issue 15: CloudNativePG") {
        return;
    }
    let w = World::new(Plane::shared(), "i15-cnpg").await;
    install_crd(w.plane, "postgresql.cnpg.io_clusters.yaml");
    let spec = json!({"version": "1.0.0", "postgres": {"cloudNativePG": {
        "instances": 3,
        "storage": {"size": "5Gi", "storageClass": "fast"},
        "imageName": "ghcr.io/cloudnative-pg/postgresql:17",
        "backup": {
            "destinationPath": "s3://backups/chat",
            "endpointURL": "https://minio.example:9000",
            "accessKeyId": {"name": "s3", "key": "id"},
            "secretAccessKey": {"name": "s3", "key": "secret"},
            "retentionPolicy": "30d",
        },
    }}});
    w.apply_cluster("pg", spec).await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        w.client.clone(),
        &w.ns,
        &chat_operator::render::cnpg_cluster_resource(),
    );
    // Applied by the operator and stored as rendered: the CRD's schema prunes what it
    // does not know and refuses what it cannot validate, so a misspelt field would be
    // missing here (or the Cluster absent).
    let stored = eventually("the CloudNativePG Cluster", SETTLE, || async {
        api.get_opt("pg-postgres").await.ok().flatten()
    })
    .await;
    let stored = serde_json::to_value(&stored).expect("json");
    assert_eq!(
        stored["metadata"]["ownerReferences"][0]["kind"],
        "ChatCluster"
    );
    let spec = &stored["spec"];
    assert_eq!(spec["instances"], 3);
    assert_eq!(spec["imageName"], "ghcr.io/cloudnative-pg/postgresql:17");
    assert_has(
        &spec["storage"],
        &json!({"size": "5Gi", "storageClass": "fast"}),
    );
    assert_eq!(spec["enableSuperuserAccess"], false);
    let initdb = &spec["bootstrap"]["initdb"];
    assert_eq!(initdb["database"], "chat");
    assert_eq!(initdb["owner"], "chat_service");
    assert_eq!(initdb["secret"], json!({"name": "pg-postgres-chat"}));
    let post_init = initdb["postInitSQL"].to_string();
    for (db, role) in [
        ("users", "auth_service"),
        ("notification", "notification_service"),
        ("saga", "saga_service"),
    ] {
        assert!(
            post_init.contains(&format!("CREATE DATABASE {db} OWNER {role}")),
            "{post_init}"
        );
    }
    assert_has(
        &spec["managed"]["roles"],
        &json!([
            {"name": "auth_service", "ensure": "present", "login": true,
             "passwordSecret": {"name": "pg-postgres-auth"}},
            {"name": "notification_service", "ensure": "present", "login": true,
             "passwordSecret": {"name": "pg-postgres-notification"}},
            {"name": "saga_service", "ensure": "present", "login": true,
             "passwordSecret": {"name": "pg-postgres-saga"}},
        ]),
    );
    assert_has(
        &spec["backup"],
        &json!({"retentionPolicy": "30d", "barmanObjectStore": {
            "destinationPath": "s3://backups/chat",
            "endpointURL": "https://minio.example:9000",
            "s3Credentials": {
                "accessKeyId": {"name": "s3", "key": "id"},
                "secretAccessKey": {"name": "s3", "key": "secret"},
            },
        }}),
    );
    // No single-pod PostgreSQL beside it.
    assert!(w
        .api::<StatefulSet>()
        .get_opt("pg-postgres")
        .await
        .expect("reading")
        .is_none());

    // One basic-auth Secret per role, each with its own password.
    let mut passwords = Vec::new();
    for (c, role) in [
        ("auth", "auth_service"),
        ("chat", "chat_service"),
        ("notification", "notification_service"),
        ("saga", "saga_service"),
    ] {
        let name = format!("pg-postgres-{c}");
        let secret = eventually(&format!("Secret {name}"), SETTLE, || async {
            w.secret(&name).await
        })
        .await;
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/basic-auth"));
        assert_eq!(secret_value(&secret, "username"), role);
        let password = secret_value(&secret, "password");
        assert!(password.len() >= 32, "{name}: a short password");
        passwords.push(password);
    }
    passwords.sort();
    passwords.dedup();
    assert_eq!(passwords.len(), 4, "the roles share a password");

    // The services (and their migrations) log in as their own role to the primary.
    w.complete_migrations("pg", 4).await;
    for (c, role, db) in [
        ("auth", "auth_service", "users"),
        ("chat", "chat_service", "chat"),
        ("notification", "notification_service", "notification"),
        ("saga", "saga_service", "saga"),
    ] {
        let name = format!("pg-{c}");
        let d = eventually(&format!("Deployment {name}"), SETTLE, || async {
            w.deployment(&name).await
        })
        .await;
        assert_eq!(
            env_of(&d, "POSTGRES_PASSWORD").expect("POSTGRES_PASSWORD")["valueFrom"]
                ["secretKeyRef"],
            json!({"name": format!("pg-postgres-{c}"), "key": "password", "optional": false})
        );
        assert_eq!(
            env_of(&d, "DATABASE_URL").expect("DATABASE_URL")["value"],
            format!(
                "postgres://{role}:$(POSTGRES_PASSWORD)@pg-postgres-rw:5432/{db}?sslmode=require"
            )
        );
        assert!(
            env_of(&d, "POSTGRES_URL").is_none(),
            "{name} reads a shared URL"
        );
    }
}

#[tokio::test]
async fn i15_the_single_pod_postgres_gives_each_service_its_own_role_first() {
    if !enabled("issue 15: PostgreSQL roles") {
        return;
    }
    let w = World::new(Plane::shared(), "i15-pgroles").await;
    w.apply_cluster("roles", json!({"version": "1.0.0"})).await;
    // The roles Job runs psql as the superuser, with each role's password from its
    // Secret; it is the only reader of the superuser password besides the server.
    let roles = eventually("the PostgreSQL roles Job", SETTLE, || async {
        w.all_jobs("roles").await.into_iter().find(is_roles_job)
    })
    .await;
    let job = serde_json::to_value(&roles).expect("json");
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "postgres:17-alpine");
    let env: Vec<serde_json::Value> = container["env"].as_array().expect("env").clone();
    let secret_of = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["valueFrom"]["secretKeyRef"].clone())
            .unwrap_or_else(|| panic!("{name} in {env:?}"))
    };
    assert_eq!(
        secret_of("PGPASSWORD"),
        json!({"name": "roles-generated", "key": "postgres-password", "optional": false})
    );
    assert_eq!(
        secret_of("SAGA_SERVICE_PASSWORD"),
        json!({"name": "roles-postgres-saga", "key": "password", "optional": false})
    );
    let script = container["command"][2].as_str().expect("script");
    assert!(
        script.contains("ALTER DATABASE users OWNER TO auth_service"),
        "{script}"
    );
    assert!(
        script.contains("REVOKE ALL ON DATABASE chat FROM PUBLIC"),
        "{script}"
    );

    // The migrations run beside it, but no Deployment exists until it has succeeded.
    let migrations = w.wait_unfinished_jobs_only("roles", 4).await;
    for j in &migrations {
        w.complete_job(&j.name_any()).await;
    }
    w.settle(Duration::from_secs(2)).await;
    assert!(
        w.deployment("roles-auth").await.is_none(),
        "a Deployment before its role exists"
    );
    w.complete_job(&roles.name_any()).await;
    let auth = eventually("Deployment roles-auth", SETTLE, || async {
        w.deployment("roles-auth").await
    })
    .await;
    assert_eq!(
        env_of(&auth, "DATABASE_URL").expect("DATABASE_URL")["value"],
        "postgres://auth_service:$(POSTGRES_PASSWORD)@roles-postgres:5432/users"
    );
    assert_eq!(
        env_of(&auth, "POSTGRES_PASSWORD").expect("POSTGRES_PASSWORD")["valueFrom"]["secretKeyRef"]
            ["name"],
        "roles-postgres-auth"
    );
    // The role Secrets are kept with the retained volume, like the generated one.
    let secret = w.secret("roles-postgres-auth").await.expect("role Secret");
    assert!(secret
        .metadata
        .owner_references
        .unwrap_or_default()
        .is_empty());
}

#[tokio::test]
async fn i15_the_managed_nats_requires_each_client_to_log_in_as_itself() {
    if !enabled("issue 15: NATS authentication") {
        return;
    }
    let w = World::new(Plane::shared(), "i15-natsauth").await;
    w.apply_cluster("na", json!({"version": "1.0.0"})).await;
    // The passwords are generated into the generated Secret, one per user.
    let secret = eventually("Secret na-generated", SETTLE, || async {
        w.secret("na-generated").await
    })
    .await;
    let chat_password = secret_value(&secret, "nats-chat-password");
    let notification_password = secret_value(&secret, "nats-notification-password");
    assert!(chat_password.len() >= 32 && notification_password.len() >= 32);
    assert_ne!(chat_password, notification_password);

    // The server's configuration names the users, not their passwords.
    let conf = eventually("ConfigMap na-nats", SETTLE, || async {
        w.api::<ConfigMap>().get_opt("na-nats").await.ok().flatten()
    })
    .await;
    let conf = &conf.data.expect("data")["nats.conf"];
    assert!(conf.contains("authorization {"), "{conf}");
    assert!(
        conf.contains("{user: chat, password: $NATS_CHAT_PASSWORD"),
        "{conf}"
    );
    assert!(
        !conf.contains(&chat_password),
        "a password in the ConfigMap"
    );
    let sts = eventually("StatefulSet na-nats", SETTLE, || async {
        w.api::<StatefulSet>()
            .get_opt("na-nats")
            .await
            .ok()
            .flatten()
    })
    .await;
    let sts = serde_json::to_value(&sts).expect("json");
    let server_env = sts["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    for key in ["nats-chat-password", "nats-notification-password"] {
        assert!(server_env.contains(key), "{server_env}");
    }

    // Each NATS client reads its own password, and only those two read one.
    w.complete_migrations("na", 4).await;
    for (c, key) in [
        ("chat", Some("nats-chat-password")),
        ("notification", Some("nats-notification-password")),
        ("auth", None),
        ("saga", None),
    ] {
        let name = format!("na-{c}");
        let d = eventually(&format!("Deployment {name}"), SETTLE, || async {
            w.deployment(&name).await
        })
        .await;
        match key {
            Some(key) => {
                assert_eq!(
                    env_of(&d, "NATS_PASSWORD").expect("NATS_PASSWORD")["valueFrom"]
                        ["secretKeyRef"],
                    json!({"name": "na-generated", "key": key, "optional": false})
                );
                assert_eq!(
                    env_of(&d, "NATS_URL").expect("NATS_URL")["value"],
                    format!("nats://{c}:$(NATS_PASSWORD)@na-nats:4222")
                );
            }
            None => {
                assert!(env_of(&d, "NATS_PASSWORD").is_none(), "{name}");
                assert!(env_of(&d, "NATS_URL").is_none(), "{name}");
            }
        }
    }
}
