//! Whether the NATS server let the agent in. The server refuses an
//! identity it does not know at connection, and a subscription its
//! permissions do not allow without closing the connection: it answers
//! the `SUB` with an error message, asynchronously, and never delivers a
//! request. An agent that trusted its `subscribe` call would say it is
//! ready while no request can reach it. So after subscribing the agent
//! makes a round trip to the server (it asks who it is, a question the
//! server answers itself); by the time the answer comes, any refusal of
//! the subscriptions made before has come too.

use std::time::Duration;

use arca_runtime::nats::Refusals;
use arca_schemas::subject;

/// How long the round trip may take. A refused subscription ends the wait
/// at once; an agent whose inbox is refused never gets the answer.
const ROUND_TRIP_WAIT: Duration = Duration::from_secs(5);

/// What the operator does about a key the server refuses for `system`:
/// the steps of the operator guide (section 10, enrollment).
pub fn not_enrolled_hint(system: &str, key: &str) -> String {
    format!(
        "this key ({key}) is not enrolled for system {system}: enroll it as the `agent` key of \
         {system} in the systems file (`arca-agent --config FILE --public-key` prints it) and \
         store it with `arca system edit FILE` (or `arca system add FILE`), then write the \
         server's users again with `arca nats-config` and reload the server \
         (`nats-server --signal reload`); if the key belongs to another system, this agent's \
         configuration names the wrong `system` or holds the wrong identity file"
    )
}

/// Makes the round trip and says which subscriptions the server refused
/// since the last check (empty: none).
pub(crate) async fn refused_subscriptions(
    client: &async_nats::Client,
    refusals: &Refusals,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + ROUND_TRIP_WAIT;
    let round_trip = client.request(subject::SERVER_USER_INFO, bytes::Bytes::new());
    tokio::pin!(round_trip);
    let mut refused = Vec::new();
    loop {
        tokio::select! {
            _ = &mut round_trip => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                refused.extend(subscription_refusals(refusals));
                if !refused.is_empty() || tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
        }
    }
    refused.extend(subscription_refusals(refusals));
    refused
}

/// The subscription refusals among the permission violations reported;
/// others are logged.
fn subscription_refusals(refusals: &Refusals) -> Vec<String> {
    let mut out = Vec::new();
    for v in refusals.take_violations() {
        if v.contains("Subscription") {
            out.push(v);
        } else {
            tracing::error!(violation = %v, "the NATS server refused a publication of this agent");
        }
    }
    out
}
