//! The `bitnet` command line run as a user runs it: every command on the
//! tiny fixture, llama.cpp's flag spellings, and every error path with its
//! documented exit status (2 usage, 3 model file, 4 input).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_bitnet");

fn tiny() -> Option<PathBuf> {
    match bitnet_stfma::testdata_dir() {
        Some(d) => Some(d.join("bitnet-tiny.gguf")),
        None => {
            eprintln!("SKIPPED: ../shared/testdata not found");
            None
        }
    }
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bitnet-cli-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn bitnet(args: &[&str]) -> Output {
    bitnet_stdin(args, "")
}

fn bitnet_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bitnet");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

#[track_caller]
fn fails(o: &Output, code: i32, message: &str) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(message), "stderr lacks {message:?}: {err}");
    assert!(!err.contains("panicked"), "a panic: {err}");
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn run_follows_llama_cli() {
    let Some(m) = tiny() else { return };
    let m = p(&m);
    let greedy = ok(&bitnet(&[
        "run",
        "-m",
        m,
        "-p",
        "The capital of France is",
        "-n",
        "8",
        "--temp",
        "0",
        "-t",
        "2",
    ]));
    assert!(greedy.starts_with("The capital of France is") && greedy.len() > 24);
    // -f reads the prompt from a file.
    let f = tmp("prompt.txt");
    std::fs::write(&f, "The capital of France is").unwrap();
    let from_file = ok(&bitnet(&[
        "run",
        "-m",
        m,
        "-f",
        p(&f),
        "-n",
        "8",
        "--temp",
        "0",
    ]));
    assert_eq!(from_file, greedy);
    // -s is the seed: the same seed gives the same sample, and it is not a system prompt.
    let sample = |seed: &str| {
        ok(&bitnet(&[
            "run",
            "-m",
            m,
            "-p",
            "Once upon a time",
            "-n",
            "12",
            "--temp",
            "1.0",
            "--top-k",
            "0",
            "--top-p",
            "1.0",
            "-s",
            seed,
        ]))
    };
    let a = sample("42");
    assert!(a.starts_with("Once upon a time"));
    assert_eq!(a, sample("42"));
    // Penalty flags parse with their llama.cpp names.
    ok(&bitnet(&[
        "run",
        "-m",
        m,
        "-p",
        "Hi",
        "-n",
        "4",
        "--repeat-penalty",
        "1.3",
        "--repeat-last-n",
        "-1",
        "-c",
        "128",
        "-b",
        "3",
    ]));
    // -sys sends the prompt as a chat turn (the prompt is not echoed).
    let chat = ok(&bitnet(&[
        "run",
        "-m",
        m,
        "-sys",
        "You are terse.",
        "-p",
        "Hello",
        "-n",
        "4",
        "--temp",
        "0",
    ]));
    assert!(!chat.starts_with("Hello"));
    // -cnv: conversation mode reads turns from stdin.
    let conv = bitnet_stdin(
        &["run", "-m", m, "-cnv", "-n", "4", "--temp", "0"],
        "Hello\n\n",
    );
    ok(&conv);
}

#[test]
fn other_commands_work() {
    let Some(m) = tiny() else { return };
    let m = p(&m);
    assert_eq!(
        ok(&bitnet(&[
            "tokenize",
            "-m",
            m,
            "-p",
            "The capital of France is"
        ]))
        .trim(),
        "[128000,791,6864,315,9822,374]"
    );
    let eval = ok(&bitnet(&[
        "eval",
        "-m",
        m,
        "-p",
        "Hello world",
        "--top",
        "3",
    ]));
    assert_eq!(eval.lines().count(), 3);
    assert!(eval.lines().all(|l| l.starts_with("{\"pos\":")));
    let eval_ids = ok(&bitnet(&[
        "eval",
        "-m",
        m,
        "--tokens",
        "128000,9906",
        "--top",
        "2",
    ]));
    assert_eq!(eval_ids.lines().count(), 2);
    let chat = bitnet_stdin(
        &[
            "chat",
            "-m",
            m,
            "-n",
            "4",
            "--temp",
            "0",
            "-sys",
            "Be brief.",
        ],
        "Hi\nWho are you?\n",
    );
    ok(&chat);
    let f = tmp("ppl.txt");
    std::fs::write(
        &f,
        "The quick brown fox jumps over the lazy dog. ".repeat(20),
    )
    .unwrap();
    let ppl = ok(&bitnet(&["perplexity", "-m", m, "-f", p(&f), "-c", "32"]));
    assert!(ppl.contains("Final estimate: PPL = "), "{ppl}");
    let info = ok(&bitnet(&["info", "-m", m]));
    assert!(info.contains("model: Config"), "{info}");
    let micro = tmp("micro.gguf");
    ok(&bitnet(&[
        "gen-model",
        "--shape",
        "micro",
        "-o",
        p(&micro),
        "-s",
        "7",
    ]));
    let bench = ok(&bitnet(&[
        "bench",
        "-m",
        p(&micro),
        "-t",
        "1",
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "1",
        "--json",
    ]));
    assert!(bench.contains("\"tg_tok_s\""), "{bench}");
}

#[test]
fn errors_have_their_exit_status() {
    let Some(m) = tiny() else { return };
    let m = p(&m);
    // 2: the command line.
    fails(
        &bitnet(&["run", "-m", m, "-p", "x", "-s", "forty-two"]),
        2,
        "invalid value",
    );
    fails(&bitnet(&["run", "-m", m]), 2, "give -p TEXT or -f FILE");
    fails(
        &bitnet(&["run", "-m", m, "-p", "x", "--top-p", "0"]),
        2,
        "--top-p",
    );
    fails(
        &bitnet(&["run", "-m", m, "-p", "x", "--repeat-last-n", "-2"]),
        2,
        "--repeat-last-n",
    );
    fails(&bitnet(&["run", "-m", m, "-p", "x", "-b", "0"]), 2, "batch");
    fails(
        &bitnet(&["gen-model", "--shape", "huge", "-o", p(&tmp("x.gguf"))]),
        2,
        "unknown shape",
    );
    fails(&bitnet(&["frobnicate"]), 2, "unrecognized subcommand");
    // 3: the model file.
    fails(
        &bitnet(&["run", "-m", "/nonexistent/model.gguf", "-p", "x"]),
        3,
        "model.gguf",
    );
    let cargo_toml = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    fails(
        &bitnet(&["run", "-m", cargo_toml, "-p", "x"]),
        3,
        "not a GGUF",
    );
    fails(
        &bitnet(&["tokenize", "-m", cargo_toml, "-p", "x"]),
        3,
        "not a GGUF",
    );
    let trunc = tmp("truncated.gguf");
    let bytes = std::fs::read(m).unwrap();
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    fails(&bitnet(&["run", "-m", p(&trunc), "-p", "x"]), 3, "");
    // 4: the input.
    let long = "word ".repeat(200);
    fails(
        &bitnet(&["run", "-m", m, "-p", &long, "-c", "64"]),
        4,
        "longer than the context",
    );
    fails(
        &bitnet(&["run", "-m", m, "-f", "/nonexistent/prompt.txt"]),
        4,
        "prompt.txt",
    );
    fails(
        &bitnet(&["eval", "-m", m, "--tokens", "1,999999999"]),
        4,
        "outside the vocabulary",
    );
    let short = tmp("short.txt");
    std::fs::write(&short, "Too short.").unwrap();
    fails(
        &bitnet(&["perplexity", "-m", m, "-f", p(&short), "-c", "64"]),
        4,
        "fewer than one window",
    );
}

#[test]
fn forced_scalar_kernel_runs_the_whole_model() {
    let Some(m) = tiny() else { return };
    let args = [
        "run",
        "-m",
        p(&m),
        "-p",
        "The capital of France is",
        "-n",
        "12",
        "--temp",
        "0",
        "-t",
        "2",
    ];
    let auto = ok(&bitnet(&args));
    let o = Command::new(BIN)
        .args(args)
        .env("BITNET_STFMA_KERNEL", "scalar")
        .output()
        .unwrap();
    assert_eq!(ok(&o), auto, "greedy text differs under the scalar kernels");
    assert!(
        text(&o.stderr).contains("kernel scalar"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn too_many_threads_are_warned_about() {
    let Some(m) = tiny() else { return };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t = (cpus + 1).to_string();
    let o = bitnet(&[
        "run",
        "-m",
        p(&m),
        "-p",
        "Hi",
        "-n",
        "2",
        "--temp",
        "0",
        "-t",
        &t,
    ]);
    ok(&o);
    assert!(text(&o.stderr).contains("warning:"), "{}", text(&o.stderr));
    let o = bitnet(&[
        "run",
        "-m",
        p(&m),
        "-p",
        "Hi",
        "-n",
        "2",
        "--temp",
        "0",
        "-t",
        "1",
    ]);
    assert!(!text(&o.stderr).contains("warning:"));
}

/// Every family's fixture through the commands a user runs: `tokenize`
/// gives bitnet.cpp's prompt tokens (BOS only where the vocabulary adds
/// one), a greedy `run` prints the prompt and bitnet.cpp's greedy
/// continuation, `info` names the family, and `chat` answers in the model's
/// format.
#[test]
fn every_family_runs_from_the_command_line() {
    let Some(dir) = bitnet_stfma::testdata_dir() else {
        eprintln!("SKIPPED: ../shared/testdata not found");
        return;
    };
    for (name, family) in [
        ("bitnet-spm-tiny", "1bitLLM"),
        ("llama-i2s-tiny", "Llama"),
        ("falcon3-i2s-tiny", "Llama"),
    ] {
        let m = dir.join(format!("{name}.gguf"));
        let m = p(&m);
        let refs = std::fs::read_to_string(dir.join(format!("{name}.ref.jsonl"))).unwrap();
        let first: serde_json::Value = serde_json::from_str(refs.lines().next().unwrap()).unwrap();
        let prompt = first["prompt"].as_str().unwrap();
        let ids = |v: &serde_json::Value| -> Vec<u64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap())
                .collect()
        };
        let tokens = ids(&first["tokens"]);
        let got = ok(&bitnet(&["tokenize", "-m", m, "-p", prompt]));
        let want: Vec<String> = tokens.iter().map(u64::to_string).collect();
        assert_eq!(got.trim(), format!("[{}]", want.join(",")), "{name}");

        // bitnet.cpp's first greedy tokens.
        let greedy: Vec<u64> = first["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["token"].as_u64().unwrap())
            .take(8)
            .collect();
        let run = ok(&bitnet(&[
            "run", "-m", m, "-p", prompt, "-n", "8", "--temp", "0", "-t", "2",
        ]));
        assert!(run.starts_with(prompt), "{name}: {run:?}");
        // (the command ends its output with a newline of its own)
        let run = run.strip_suffix('\n').unwrap_or(&run);
        // The printed continuation is bitnet.cpp's greedy tokens' bytes.
        let g = bitnet_stfma::gguf::Gguf::open(m).unwrap();
        let tok = bitnet_stfma::tokenizer::Tokenizer::from_gguf(&g).unwrap();
        let bytes: Vec<u8> = greedy
            .iter()
            .flat_map(|&t| tok.token_to_bytes(t as u32, false).to_vec())
            .collect();
        let want = format!("{prompt}{}", String::from_utf8_lossy(&bytes));
        assert_eq!(run, want, "{name}");

        let info = ok(&bitnet(&["info", "-m", m]));
        assert!(info.contains(family), "{name}: {info}");
        let eval = ok(&bitnet(&["eval", "-m", m, "-p", prompt, "--top", "2"]));
        assert_eq!(eval.lines().count(), tokens.len(), "{name}: {eval}");
        let file = tmp(&format!("{name}-ppl.txt"));
        std::fs::write(
            &file,
            "The quick brown fox jumps over the lazy dog. ".repeat(20),
        )
        .unwrap();
        let ppl = bitnet(&["perplexity", "-m", m, "-f", p(&file), "-c", "32"]);
        let out = ok(&ppl) + &text(&ppl.stderr);
        assert!(out.contains("perplexity"), "{name}: {out}");
        let chat = bitnet_stdin(&["chat", "-m", m, "-n", "4", "--temp", "0"], "Hi\n");
        ok(&chat);
    }
}

/// Every command that writes to stdout, with its arguments and stdin.
fn stdout_commands(
    m: &str,
    micro: &str,
    text: &str,
) -> Vec<(&'static str, Vec<String>, &'static str)> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        (
            "run",
            v(&["run", "-m", m, "-p", "Hello", "-n", "16", "--temp", "0"]),
            "",
        ),
        (
            "chat",
            v(&["chat", "-m", m, "-n", "8", "--temp", "0"]),
            "Hi\n",
        ),
        ("tokenize", v(&["tokenize", "-m", m, "-f", text]), ""),
        (
            "eval",
            v(&["eval", "-m", m, "-p", "Hello world", "--top", "3"]),
            "",
        ),
        (
            "perplexity",
            v(&["perplexity", "-m", m, "-f", text, "-c", "32"]),
            "",
        ),
        (
            "bench",
            v(&[
                "bench", "-m", micro, "-t", "1", "-p", "8", "-n", "4", "-r", "1", "--json",
            ]),
            "",
        ),
        ("info", v(&["info", "-m", m]), ""),
        // Nothing listens there; the load generator's table header is its
        // first write, before any request.
        (
            "loadgen",
            v(&[
                "loadgen",
                "--url",
                "http://127.0.0.1:9",
                "--clients",
                "1",
                "--requests",
                "1",
            ]),
            "",
        ),
    ]
}

fn stdout_fixtures() -> Option<(String, String, String)> {
    let m = tiny()?;
    let text = tmp("pipe-text.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    let micro = tmp("pipe-micro.gguf");
    ok(&bitnet(&[
        "gen-model",
        "--shape",
        "micro",
        "-o",
        p(&micro),
        "-s",
        "7",
    ]));
    Some((
        p(&m).to_string(),
        p(&micro).to_string(),
        p(&text).to_string(),
    ))
}

fn run_with_stdout(args: &[String], input: &str, stdout: Stdio) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bitnet");
    // The command may be gone before it reads its input.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child.wait_with_output().unwrap()
}

/// A reader that has gone before the first write (`| head -c 0`, and
/// deterministically what `| grep -q` or `| head` races towards): every
/// command ends quietly, killed by SIGPIPE as a C tool is, with no panic and
/// no message.
#[cfg(unix)]
#[test]
fn closed_stdout_ends_every_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let Some((m, micro, txt)) = stdout_fixtures() else {
        return;
    };
    for (name, args, input) in stdout_commands(&m, &micro, &txt) {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = run_with_stdout(&args, input, Stdio::from(writer));
        let err = text(&o.stderr);
        assert_eq!(
            o.status.signal(),
            Some(13),
            "{name}: status {:?}, stderr: {err}",
            o.status
        );
        assert!(
            !err.contains("panicked") && !err.contains("error"),
            "{name}: {err}"
        );
    }
}

/// A reader that takes a little and then closes (`| head -c 1`): the command
/// either finished first or ends by SIGPIPE; never a panic.
#[cfg(unix)]
#[test]
fn reader_closing_early_never_panics() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let Some((m, micro, txt)) = stdout_fixtures() else {
        return;
    };
    for (name, args, input) in stdout_commands(&m, &micro, &txt) {
        if name == "loadgen" {
            continue; // no server to finish against; covered above
        }
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
        let mut first = [0u8; 1];
        let mut so = child.stdout.take().unwrap();
        so.read_exact(&mut first).unwrap();
        drop(so);
        let o = child.wait_with_output().unwrap();
        let err = text(&o.stderr);
        assert!(
            o.status.success() || o.status.signal() == Some(13),
            "{name}: status {:?}, stderr: {err}",
            o.status
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
}

/// Any other write error is an error with its message and exit status 1.
#[cfg(target_os = "linux")]
#[test]
fn full_disk_on_stdout_is_an_error() {
    let Some((m, micro, txt)) = stdout_fixtures() else {
        return;
    };
    for (name, args, input) in stdout_commands(&m, &micro, &txt) {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = run_with_stdout(&args, input, Stdio::from(full));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("error: writing to standard output: No space left on device")
                && !err.contains("panicked"),
            "{name}: {err}"
        );
    }
}
