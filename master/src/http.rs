//! The master's HTTP side (`drover master --http ADDR`): a read-only JSON mirror of the operator
//! API (`/api/v1/state`, `/api/v1/metrics`), Prometheus text (`/metrics`) and a dashboard page
//! (`/`) that renders the JSON. Everything is read through the same inbox as the gRPC services, so
//! a master that does not lead answers 503 naming the leader.

use crate::cluster::ClusterService;
use crate::driver::MasterHandle;
use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use drover_proto::v1;
use serde_json::{Value, json};

/// What the handlers read: the leading master's state (through `MasterHandle`) and this
/// master's own status (`ClusterService`, answered leading or not).
#[derive(Clone)]
pub struct HttpState {
    pub master: MasterHandle,
    pub cluster: ClusterService,
}

impl FromRef<HttpState> for MasterHandle {
    fn from_ref(state: &HttpState) -> MasterHandle {
        state.master.clone()
    }
}

impl FromRef<HttpState> for ClusterService {
    fn from_ref(state: &HttpState) -> ClusterService {
        state.cluster.clone()
    }
}

/// The routes, served by the binary on `--http`.
pub fn router(master: MasterHandle, cluster: ClusterService) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/v1/state", get(state))
        .route("/api/v1/metrics", get(metrics_json))
        .route("/api/v1/masters", get(masters))
        .route("/metrics", get(metrics_text))
        .with_state(HttpState { master, cluster })
}

/// Every master of the ensemble with its role, answered by any master (leading or not): this
/// one from its own replica, the others over `Cluster.Status`.
async fn masters(State(cluster): State<ClusterService>) -> Response {
    let masters: Vec<Value> = cluster
        .ensemble()
        .await
        .into_iter()
        .map(|(id, address, answer)| match answer {
            Ok(s) => crate::cluster::status_json(&s),
            Err(error) => json!({"master_id": id, "address": address, "error": error}),
        })
        .collect();
    let leaders: Vec<&Value> = masters.iter().filter(|m| m["role"] == "leading").collect();
    let leader = match leaders.as_slice() {
        [one] => one["master_id"].clone(),
        _ => Value::Null,
    };
    axum::Json(json!({"leader_id": leader, "masters": masters})).into_response()
}

fn unavailable(status: tonic::Status) -> Response {
    let leader = status
        .metadata()
        .get(drover_proto::LEADER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": status.message(), "leader": leader})),
    )
        .into_response()
}

fn resources(r: Option<&v1::Resources>) -> Value {
    let r = r.cloned().unwrap_or_default();
    json!({
        "cpus": r.millicpus as f64 / 1000.0,
        "mem_bytes": r.mem_bytes,
        "ports": r.ports.iter().map(|p| format!("{}-{}", p.begin, p.end)).collect::<Vec<_>>(),
    })
}

fn task_state_name(state: i32) -> String {
    v1::TaskState::try_from(state)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| state.to_string())
}

/// The cluster state as JSON (field names as in `operator.proto`).
pub fn state_json(s: &v1::ClusterState) -> Value {
    json!({
        "leader": s.leader,
        "master_id": s.master_id,
        "agents": s.agents.iter().map(|a| {
            let info = a.agent.clone().unwrap_or_default();
            json!({
                "id": info.id, "hostname": info.hostname, "address": info.address,
                "attributes": info.attributes, "reachable": a.reachable,
                "resources": resources(info.resources.as_ref()),
                "used": resources(a.used.as_ref()), "offered": resources(a.offered.as_ref()),
            })
        }).collect::<Vec<_>>(),
        "frameworks": s.frameworks.iter().map(|f| {
            let info = f.framework.clone().unwrap_or_default();
            json!({
                "id": info.id, "name": info.name, "role": info.role, "principal": info.principal,
                "failover_timeout_seconds": info.failover_timeout_seconds,
                "connected": f.connected, "suppressed": f.suppressed,
                "used": resources(f.used.as_ref()), "offered": resources(f.offered.as_ref()),
            })
        }).collect::<Vec<_>>(),
        "tasks": s.tasks.iter().map(|t| {
            let task = t.task.clone().unwrap_or_default();
            let status = t.status.clone().unwrap_or_default();
            json!({
                "framework_id": t.framework_id, "id": task.task_id, "name": task.name,
                "agent_id": task.agent_id, "labels": task.labels,
                "resources": resources(task.resources.as_ref()),
                "state": task_state_name(status.state), "message": status.message,
                "reason": status.reason, "exit_code": status.exit_code, "signal": status.signal,
                "timestamp_ms": status.timestamp_ms,
            })
        }).collect::<Vec<_>>(),
    })
}

async fn state(State(handle): State<MasterHandle>) -> Response {
    match handle.state().await {
        Ok(s) => axum::Json(state_json(&s)).into_response(),
        Err(status) => unavailable(status),
    }
}

fn metrics_value(m: &v1::MasterMetrics) -> Value {
    json!({
        "allocation_cycles": m.allocation_cycles,
        "allocation_cycle_p50_us": m.allocation_cycle_p50_us,
        "allocation_cycle_p99_us": m.allocation_cycle_p99_us,
        "allocation_cycle_max_us": m.allocation_cycle_max_us,
        "agents": m.agents, "frameworks": m.frameworks, "tasks_active": m.tasks_active,
        "offers_sent": m.offers_sent, "tasks_launched": m.tasks_launched,
        "status_updates": m.status_updates,
    })
}

async fn metrics_json(State(handle): State<MasterHandle>) -> Response {
    match handle.metrics().await {
        Ok(m) => axum::Json(metrics_value(&m)).into_response(),
        Err(status) => unavailable(status),
    }
}

/// Prometheus text exposition. A master that does not lead reports `drover_master_leading 0`
/// and nothing else (its counters belong to the leader).
async fn metrics_text(State(handle): State<MasterHandle>) -> Response {
    let mut out = String::new();
    let mut line = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    match handle.metrics().await {
        Ok(m) => {
            line(
                "drover_master_leading",
                "gauge",
                "1 if this master leads.",
                "1".into(),
            );
            line(
                "drover_master_agents",
                "gauge",
                "Agents known to the leader.",
                m.agents.to_string(),
            );
            line(
                "drover_master_frameworks",
                "gauge",
                "Registered frameworks.",
                m.frameworks.to_string(),
            );
            line(
                "drover_master_tasks_active",
                "gauge",
                "Non-terminal tasks.",
                m.tasks_active.to_string(),
            );
            line(
                "drover_master_offers_sent_total",
                "counter",
                "Offers sent this term.",
                m.offers_sent.to_string(),
            );
            line(
                "drover_master_tasks_launched_total",
                "counter",
                "Tasks launched this term.",
                m.tasks_launched.to_string(),
            );
            line(
                "drover_master_status_updates_total",
                "counter",
                "Agent status updates this term.",
                m.status_updates.to_string(),
            );
            line(
                "drover_master_allocation_cycles_total",
                "counter",
                "Allocation cycles this term.",
                m.allocation_cycles.to_string(),
            );
            out.push_str(
                "# HELP drover_master_allocation_cycle_seconds Allocation cycle duration.\n",
            );
            out.push_str("# TYPE drover_master_allocation_cycle_seconds summary\n");
            for (q, us) in [
                ("0.5", m.allocation_cycle_p50_us),
                ("0.99", m.allocation_cycle_p99_us),
                ("1", m.allocation_cycle_max_us),
            ] {
                out.push_str(&format!(
                    "drover_master_allocation_cycle_seconds{{quantile=\"{q}\"}} {}\n",
                    us as f64 / 1e6
                ));
            }
        }
        Err(_) => line(
            "drover_master_leading",
            "gauge",
            "1 if this master leads.",
            "0".into(),
        ),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

/// One static page that polls `/api/v1/state`; no build step, no external assets.
const DASHBOARD: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Drover</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.05em;margin-top:1.5em}
table{border-collapse:collapse;font-size:.9em}td,th{border-bottom:1px solid #ddd;padding:.25em .7em;text-align:left}
.bad{color:#b00}.ok{color:#070}#err{color:#b00}
</style></head><body>
<h1>Drover <span id="leader"></span></h1><div id="err"></div>
<h2>Agents</h2><table id="agents"></table>
<h2>Frameworks</h2><table id="frameworks"></table>
<h2>Services</h2><table id="services"></table>
<h2>Tasks</h2><table id="tasks"></table>
<script>
function esc(s){return String(s??"").replace(/[&<>"]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]))}
function table(id,head,rows){document.getElementById(id).innerHTML="<tr>"+head.map(h=>"<th>"+esc(h)+"</th>").join("")+"</tr>"+rows.map(r=>"<tr>"+r.map(c=>"<td>"+c+"</td>").join("")+"</tr>").join("")}
function gib(b){return (b/1073741824).toFixed(2)+" GiB"}
async function refresh(){
 try{
  const r=await fetch("/api/v1/state");const s=await r.json();
  if(!r.ok){document.getElementById("err").textContent=(s.error||"unavailable")+(s.leader?" — leader: "+s.leader:"");return}
  document.getElementById("err").textContent="";
  document.getElementById("leader").textContent="— leader "+s.leader;
  table("agents",["id","host","address","reachable","cpus used/total","mem used/total"],s.agents.map(a=>[esc(a.id),esc(a.hostname),esc(a.address),a.reachable?'<span class="ok">yes</span>':'<span class="bad">no</span>',a.used.cpus+" / "+a.resources.cpus,gib(a.used.mem_bytes)+" / "+gib(a.resources.mem_bytes)]));
  table("frameworks",["id","name","role","connected","cpus used","mem used"],s.frameworks.map(f=>[esc(f.id),esc(f.name),esc(f.role),f.connected?"yes":'<span class="bad">no</span>',f.used.cpus,gib(f.used.mem_bytes)]));
  const svc={};for(const t of s.tasks){const n=t.labels&&t.labels.service;if(!n)continue;svc[n]=svc[n]||{running:0,other:0};if(t.state==="TASK_RUNNING")svc[n].running++;else svc[n].other++}
  table("services",["service","running tasks","other tasks"],Object.entries(svc).map(([n,c])=>[esc(n),c.running,c.other]));
  table("tasks",["id","framework","agent","state","cpus","mem","ports","message"],s.tasks.map(t=>[esc(t.id),esc(t.framework_id),esc(t.agent_id),(t.state==="TASK_RUNNING"?'<span class="ok">':'<span>')+esc(t.state)+"</span>",t.resources.cpus,gib(t.resources.mem_bytes),esc(t.resources.ports.join(",")),esc(t.message)]));
 }catch(e){document.getElementById("err").textContent="cannot reach the master: "+e}
}
refresh();setInterval(refresh,2000);
</script></body></html>"#;
