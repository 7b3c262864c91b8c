//! A fake API server for the reconcile tests, on kube's `tower_test` mock transport.
//!
//! controller-rs's `ApiServerVerifier` scripts each expected request in order; with the
//! dozens of objects a `ChatCluster` owns that script would restate the whole render.
//! This fake instead keeps objects in memory by URL path and implements the verbs the
//! operator uses (GET, server-side-apply PATCH incl. `/status`, POST, PUT with
//! `resourceVersion` checks, DELETE), records every request, and counts the writes that
//! changed something. Tests then assert on the log (which requests, in which order) and
//! on the stored state, and play the other controllers by editing statuses.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use http::{Request, Response, StatusCode};
use kube::{client::Body, Client};
use serde_json::{json, Value};
use tower_test::mock;

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    log: Vec<String>,
    changes: usize,
    /// Requests whose path contains the key answer with the status code.
    failures: Vec<(String, u16)>,
    next_version: u64,
}

/// Handle on the fake server's state; cheap to clone.
#[derive(Clone, Default)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (k, v) in patch {
                match into.get_mut(k) {
                    Some(existing) if v.is_object() && existing.is_object() => merge(existing, v),
                    _ => {
                        into.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (into, patch) => *into = patch.clone(),
    }
}

/// `/api/v1/namespaces/<ns>/<plural>` or `/apis/<group>/<version>/namespaces/<ns>/<plural>`.
fn is_collection(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.first() {
        Some(&"api") => segments.len() == 5 && segments[2] == "namespaces",
        Some(&"apis") => segments.len() == 6 && segments[3] == "namespaces",
        _ => false,
    }
}

fn status_body(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": reason, "reason": reason, "code": code,
    })
}

impl FakeApiServer {
    /// A client whose requests this server answers.
    pub fn start() -> (Client, FakeApiServer) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = FakeApiServer::default();
        let s = server.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (code, body) = s.answer(request).await;
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        (Client::new(service, "default"), server)
    }

    async fn answer(&self, request: Request<Body>) -> (StatusCode, Value) {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let mut st = self.state.lock().unwrap();
        let line = format!("{method} {path}");
        st.log.push(line.clone());
        if let Some((_, code)) = st.failures.iter().find(|(k, _)| line.contains(k.as_str())) {
            let code = *code;
            return (
                StatusCode::from_u16(code).unwrap(),
                status_body(code, "InjectedFailure"),
            );
        }
        match method.as_str() {
            "GET" => match st.objects.get(&path) {
                Some(o) => (StatusCode::OK, o.clone()),
                // A collection: every object stored right under it (selectors ignored).
                None if is_collection(&path) => {
                    let prefix = format!("{path}/");
                    let items: Vec<Value> = st
                        .objects
                        .iter()
                        .filter(|(p, _)| {
                            p.strip_prefix(&prefix)
                                .is_some_and(|rest| !rest.contains('/'))
                        })
                        .map(|(_, o)| o.clone())
                        .collect();
                    (
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "List",
                               "metadata": {"resourceVersion": "1"}, "items": items}),
                    )
                }
                None => (StatusCode::NOT_FOUND, status_body(404, "NotFound")),
            },
            "PATCH" => {
                let (target, field) = match path.strip_suffix("/status") {
                    Some(parent) => (parent.to_string(), Some("status")),
                    None => (path.clone(), None),
                };
                let before = st.objects.get(&target).cloned();
                let mut object = before.clone().unwrap_or_else(
                    || json!({"metadata": {"uid": format!("uid-{target}"), "generation": 1}}),
                );
                match field {
                    // The operator is the only writer of a status: it replaces it whole.
                    Some(f) => object[f] = body[f].clone(),
                    None => {
                        let old_spec = object.get("spec").cloned();
                        merge(&mut object, &body);
                        if before.is_some() && object.get("spec") != old_spec.as_ref() {
                            let g = object["metadata"]["generation"].as_i64().unwrap_or(1);
                            object["metadata"]["generation"] = json!(g + 1);
                        }
                    }
                }
                st.store(target, before, object)
            }
            "POST" => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let target = format!("{path}/{name}");
                if st.objects.contains_key(&target) {
                    return (StatusCode::CONFLICT, status_body(409, "AlreadyExists"));
                }
                st.store(target, None, body)
            }
            "PUT" => {
                let before = st.objects.get(&path).cloned();
                let current = before
                    .as_ref()
                    .map(|o| o["metadata"]["resourceVersion"].clone());
                if current.is_some_and(|v| v != body["metadata"]["resourceVersion"]) {
                    return (StatusCode::CONFLICT, status_body(409, "Conflict"));
                }
                st.store(path, before, body)
            }
            "DELETE" => match st.objects.remove(&path) {
                Some(o) => {
                    st.changes += 1;
                    (StatusCode::OK, o)
                }
                None => (StatusCode::NOT_FOUND, status_body(404, "NotFound")),
            },
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                status_body(405, "MethodNotAllowed"),
            ),
        }
    }

    /// Every request so far, as `METHOD /path`.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// How many writes changed a stored object.
    pub fn changes(&self) -> usize {
        self.state.lock().unwrap().changes
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Stores an object as another actor would (no change counted).
    pub fn put(&self, path: &str, object: Value) {
        self.state
            .lock()
            .unwrap()
            .objects
            .insert(path.to_string(), object);
    }

    /// Edits a stored object as another actor would (no change counted).
    pub fn edit(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut st = self.state.lock().unwrap();
        f(st.objects.get_mut(path).unwrap());
    }

    pub fn paths(&self) -> Vec<String> {
        self.state.lock().unwrap().objects.keys().cloned().collect()
    }

    /// Makes requests whose `METHOD /path` contains `key` fail with `code`.
    pub fn fail(&self, key: &str, code: u16) {
        self.state
            .lock()
            .unwrap()
            .failures
            .push((key.to_string(), code));
    }

    pub fn heal(&self) {
        self.state.lock().unwrap().failures.clear();
    }
}

impl State {
    fn store(
        &mut self,
        path: String,
        before: Option<Value>,
        mut object: Value,
    ) -> (StatusCode, Value) {
        // As the API server does: a Secret's `stringData` is stored base64 in `data`.
        if let Some(Value::Object(string_data)) =
            object.as_object_mut().and_then(|o| o.remove("stringData"))
        {
            use base64::Engine;
            for (k, v) in string_data {
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(v.as_str().unwrap_or_default());
                object["data"][k] = json!(encoded);
            }
        }
        let strip = |o: &Value| {
            let mut o = o.clone();
            if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            o
        };
        let changed = before.as_ref().map(strip) != Some(strip(&object));
        if changed {
            self.changes += 1;
            self.next_version += 1;
            object["metadata"]["resourceVersion"] = json!(self.next_version.to_string());
        } else if let Some(b) = &before {
            object["metadata"]["resourceVersion"] = b["metadata"]["resourceVersion"].clone();
        }
        let code = if before.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        self.objects.insert(path, object.clone());
        (code, object)
    }
}
