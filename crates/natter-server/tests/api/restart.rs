//! What survives a restart: every account, device, token and contact.

use serde_json::json;

use crate::support::TestApp;

#[tokio::test]
async fn a_restart_keeps_accounts_devices_and_contacts() {
    let mut app = TestApp::start().await;
    let hal = app.signup("+14155550700", "Hal").await;
    let hal_tablet = app.login("+14155550700", "Tablet").await;
    let ida = app.signup("+14155550701", "Ida").await;
    hal.adds_contact(&app, &ida).await;
    hal.patch(&app, "/api/v1/users/me", json!({"about": "still here"}))
        .await
        .ok(200);
    // A code issued before the restart still works after it.
    let pending = app.code_for("+14155550702").await;

    let before_devices = hal.get(&app, "/api/v1/devices").await.ok(200);
    let before_contacts = hal.get(&app, "/api/v1/users/contacts").await.ok(200);

    app.restart().await;

    assert_eq!(
        hal.get(&app, "/api/v1/devices").await.ok(200),
        before_devices
    );
    assert_eq!(
        hal.get(&app, "/api/v1/users/contacts").await.ok(200),
        before_contacts
    );
    assert_eq!(
        hal.get(&app, "/api/v1/users/me").await.ok(200)["about"],
        "still here"
    );
    hal_tablet.get(&app, "/api/v1/users/me").await.ok(200);
    ida.get(&app, "/api/v1/users/me").await.ok(200);
    app.post(
        "/api/v1/users/register",
        json!({"phone": "+14155550702", "name": "Jo", "verification_code": pending}),
    )
    .await
    .ok(201);
    // The number is still taken.
    let code = app.code_for("+14155550700").await;
    app.post(
        "/api/v1/users/register",
        json!({"phone": "+14155550700", "name": "Hal 2", "verification_code": code}),
    )
    .await
    .expect(409, "phone_taken");
}
