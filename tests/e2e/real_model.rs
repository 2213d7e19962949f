//! The demo's `support` agent on a real (small) language model: SmolLM2-135M-Instruct
//! served over the OpenAI-compatible API by `llama-cpp-python[server]`, reached through
//! the `openai` provider. Asserts the mechanics (a reply, streamed deltas, no error),
//! not the model's wisdom. `scripts/install-llama-server` installs both into a cache
//! outside the checkout (compiling llama.cpp once per machine: about 6 minutes here).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::json;
use weft_bus::{Envelope, FrameType};

use crate::{Up, free_port};

/// `LLAMA_PYTHON` and `LLAMA_MODEL` from the install script.
fn install() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/install-llama-server"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/install-llama-server");
    assert!(
        out.status.success(),
        "scripts/install-llama-server failed: the real-model test needs Python 3.11 with venv and a C/C++ toolchain (gcc, g++, cmake via pip) to build llama-cpp-python; run the script by hand to see why"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The llama.cpp server on `port`, killed on drop.
struct Llama(std::process::Child);

impl Drop for Llama {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_support_agent_answers_on_a_real_model_and_streams_its_tokens() {
    let vars = tokio::task::spawn_blocking(install).await.unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("llama.log")).unwrap();
    let _llama = Llama(
        Command::new(&vars["LLAMA_PYTHON"])
            .args(["-m", "llama_cpp.server", "--model", &vars["LLAMA_MODEL"]])
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--n_ctx",
                "4096",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start llama_cpp.server"),
    );
    let base = format!("http://127.0.0.1:{port}/v1");
    let client = crate::http_client();
    let mut ready = false;
    for _ in 0..120 {
        if client
            .get(format!("{base}/models"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        ready,
        "llama_cpp.server did not come up:\n{}",
        std::fs::read_to_string(dir.path().join("llama.log")).unwrap_or_default()
    );

    let env = [
        ("WEFT_MODEL_PROVIDER", "openai"),
        ("OPENAI_BASE_URL", base.as_str()),
        ("WEFT_MODEL", "smollm2-135m-instruct"),
    ];
    let mut up = Up::start_env(&["--demo"], &env);
    tokio::task::block_in_place(|| up.proc.banner());
    let bus = weft_bus::Bus::connect(&format!("nats://127.0.0.1:{}", up.nats_port))
        .await
        .unwrap();
    let request = Envelope::request(
        "support",
        json!({"message": "Say hello to the customer in one short sentence."}),
    );
    let options = weft_bus::stream::StreamOptions::default().timeout(Duration::from_secs(120));
    let mut frames = bus
        .invoke_stream(&"support".parse().unwrap(), request, options)
        .await
        .unwrap();
    let (mut texts, mut reply) = (Vec::new(), None);
    while let Some(frame) = frames.next().await {
        let frame = frame.unwrap_or_else(|e| panic!("stream failed: {e}\n{}", up.log()));
        match frame.frame_type() {
            FrameType::Delta if frame.payload()["type"] == "text" => {
                texts.push(frame.payload()["text"].as_str().unwrap().to_owned())
            }
            FrameType::Final => reply = Some(frame.payload().clone()),
            FrameType::Error => panic!("the chat failed: {}\n{}", frame.payload(), up.log()),
            _ => {}
        }
    }
    let reply = reply.expect("a final frame");
    let text = reply["reply"].as_str().unwrap();
    println!("SmolLM2 said ({} deltas): {text:?}", texts.len());
    assert!(!text.trim().is_empty(), "an empty reply: {reply}");
    assert!(texts.len() >= 2, "the tokens arrived as deltas: {texts:?}");
    assert_eq!(texts.concat(), text, "the deltas are the reply");
}
