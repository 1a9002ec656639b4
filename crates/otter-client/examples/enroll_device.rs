//! Enrolls one device and prints its token (for `scripts/api-fuzz`, which fuzzes the device API
//! with it): creates an enrollment key through the admin API, then enrolls a fresh Ed25519 key
//! with it, so the device is accepted at once.
//!
//! `cargo run -p otter-client --example enroll_device -- URL ADMIN_TOKEN [COMPATIBLE]`

use ed25519_dalek::SigningKey;
use otter_client::blocking::Client;
use otter_client::{admin, device};
use otter_proto::EnrollRequest;
use otter_proto::admin::CreateEnrollmentKey;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(admin_token)) = (args.next(), args.next()) else {
        return Err("usage: enroll_device URL ADMIN_TOKEN [COMPATIBLE]".into());
    };
    let compatible = args.next().unwrap_or_else(|| "api-fuzz".into());
    let admin_client = Client::new(&url, Some(admin_token));
    let key = admin_client.send(&admin::create_enrollment_key(&CreateEnrollmentKey {
        name: "api-fuzz".into(),
    }))?;
    let secret = key
        .key
        .ok_or("the server did not return the enrollment key's secret")?;
    let device_client = Client::new(&url, None);
    let challenge = device_client.send(&device::challenge())?;
    let signing = SigningKey::generate(&mut rand::rngs::OsRng);
    let req = EnrollRequest::signed(
        &signing,
        &challenge.challenge,
        &compatible,
        Some("api-fuzz".into()),
        Some(secret),
        None,
    );
    let answer = device_client.send(&device::enroll(&req))?;
    let token = answer
        .token
        .ok_or_else(|| format!("enrolled as {:?}, without a token", answer.status))?;
    println!("{token}");
    Ok(())
}
