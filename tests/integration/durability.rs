//! Restarts and crashes: what was answered 200 survives, what was rotated stays rotated.

use hyper::StatusCode;

use crate::common::*;

const NO_GRACE: [&str; 2] = ["--reuse-grace", "0"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_survive_a_restart_with_the_generated_secret() {
    let (_dir, data) = data_dir();
    let seed = format!("ana@example.com:2:Ana:{PASSWORD}");
    let mut args = vec!["--seed-user", seed.as_str()];
    args.extend(NO_GRACE);
    let server = ServerProcess::start(&data, &args);
    let first = login(&server.client, "ana@example.com", None).await;
    let second = Tokens::from_body(&server.client.refresh(&first.refresh).await.body);
    assert_eq!(server.terminate().code(), Some(0), "clean exit on SIGTERM");

    let secret = data.join("latchkey.secret");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let db_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("latchkey.redb"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(db_mode & 0o777, 0o600);

    // Restarted with the same seed flag: the user is not re-created.
    let server = ServerProcess::start(&data, &args);
    assert_eq!(
        server.client.profile(&second.access).await.status,
        StatusCode::OK,
        "signed with the stored secret"
    );
    let third = server.client.refresh(&second.refresh).await;
    assert_eq!(third.status, StatusCode::OK, "{}", third.text);
    server
        .client
        .refresh(&first.refresh)
        .await
        .assert_error(401, "token_reused");
    server
        .client
        .refresh(&Tokens::from_body(&third.body).refresh)
        .await
        .assert_error(401, "session_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_answered_200_survives_kill_9() {
    let (_dir, data) = data_dir();
    let seed = format!("ana@example.com:2:Ana:{PASSWORD}");
    let mut args = vec!["--seed-user", seed.as_str(), "--secret", SECRET];
    args.extend(NO_GRACE);
    for round in 0..3 {
        let server = ServerProcess::start(&data, &args);
        let first = login(&server.client, "ana@example.com", None).await;
        let rotated = server.client.refresh(&first.refresh).await;
        assert_eq!(rotated.status, StatusCode::OK);
        let second = Tokens::from_body(&rotated.body);
        server.kill_hard(); // right after the answer: no shutdown, no flush

        let server = ServerProcess::start(&data, &args);
        let third = server.client.refresh(&second.refresh).await;
        assert_eq!(
            third.status,
            StatusCode::OK,
            "round {round}: the token answered 200 must work: {}",
            third.text
        );
        server
            .client
            .refresh(&first.refresh)
            .await
            .assert_error(401, "token_reused");
        server.kill_hard();
    }
}
