//! The task definitions as ECS would run them, short of a container: an origin's
//! command and environment, as moto holds them with every reference resolved, run
//! as `configwatch serve` against moto with only where it listens and keeps its
//! data changed; and every variable a container sets is one the server reads.

use std::collections::BTreeSet;
use std::process::Command;

use configwatch_test_support::moto::{Moto, ROOT};
use configwatch_test_support::moto_ecs::{DATA_STACK, service_template};
use configwatch_test_support::{PATIENCE, Scrape, ServerProcess, eventually, http_get, temp_dir};

use crate::on_moto::{deploy, environment};
use crate::{container, resource};

const BIN: &str = env!("CARGO_BIN_EXE_configwatch");

#[test]
fn every_variable_and_flag_a_container_sets_is_one_configwatch_serve_reads() {
    let help = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let variables: BTreeSet<&str> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap())
        .collect();
    assert!(variables.contains("CONFIGWATCH_LISTEN"), "{help}");
    let template = service_template();
    for task in [
        "Origin1TaskDefinition",
        "Origin2TaskDefinition",
        "RelayTaskDefinition",
    ] {
        let container = container(&template, task);
        let secrets = container["Secrets"].as_array().into_iter().flatten();
        for entry in container["Environment"]
            .as_array()
            .unwrap()
            .iter()
            .chain(secrets)
        {
            let name = entry["Name"].as_str().unwrap();
            assert!(
                // The relay's Cognito refresh token is only ever an
                // environment variable (so that it is never on a command line).
                variables.contains(name) || name == configwatch::cli::COGNITO_REFRESH_TOKEN_ENV,
                "{task} sets {name}, which configwatch serve does not read"
            );
        }
        let command = container["Command"].as_array().unwrap();
        assert_eq!(command[0], "serve", "{task}");
        for flag in command
            .iter()
            .filter_map(|a| a.as_str()?.strip_prefix("--"))
        {
            assert!(help.contains(&format!("--{flag} ")), "{task}: --{flag}");
        }
    }
    assert!(
        resource(&template, "RelayTaskDefinition")["Properties"]
            .get("TaskRoleArn")
            .is_none()
    );
}

#[tokio::test]
async fn an_origin_task_runs_as_defined_and_reads_its_own_queue_only() {
    let moto = Moto::start();
    let (_, stack) = deploy(&moto, &[]).await;
    let data = moto.stack(stack.resource(DATA_STACK)).await;
    let state = moto.state().await;
    let task = state.resource(
        "ecs",
        "TaskDefinition",
        stack.resource("Origin1TaskDefinition"),
    );
    let container = &task["container_definitions"][0];
    let args: Vec<&str> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();

    // The task's command and environment; only the addresses (a free port on
    // 127.0.0.1, not the task's own network) and the data directory differ.
    let dir = temp_dir();
    let mut command = Command::new(BIN);
    command.args(&args).envs(environment(container));
    command
        .env("CONFIGWATCH_LISTEN", "127.0.0.1:0")
        .env("CONFIGWATCH_ADMIN_LISTEN", "127.0.0.1:0")
        .env("CONFIGWATCH_DATA_DIR", dir.path())
        .env("CONFIGWATCH_LOG", "warn");
    moto.aws_env(&mut command);
    let server = ServerProcess::start(command).await;
    let admin = server.admin.unwrap();
    assert_eq!(http_get(admin, "/healthz").await.status, 200);

    // A Parameter Store change reaches both origins' queues; origin 1 takes the
    // message from its own and leaves origin 2's alone.
    moto.ssm_change_event(&format!("{ROOT}/acme/db/url"), "Update", "String")
        .await;
    eventually(
        PATIENCE,
        || "origin 1 to receive the change from its queue".to_owned(),
        || async {
            let scrape = Scrape::take(admin).await;
            (scrape.value("configwatch_sqs_messages_received_total") == 1.0).then_some(())
        },
    )
    .await;
    let waiting =
        moto.queue_attributes(data.output("Origin2QueueUrl")).await["ApproximateNumberOfMessages"]
            .clone();
    assert_eq!(waiting, "1", "origin 2's message waits for origin 2");
}
