//! The `bitnet` command line run as a user runs it: every command on the
//! tiny fixture, llama.cpp's flag spellings, and every error path with its
//! documented exit status (2 usage, 3 model file, 4 input).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

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

/// A micro synthetic model (`gen-model --shape micro -s 7`), written once
/// per test process for the tests that only need some model (bench and the
/// stdout tests).
fn micro() -> &'static str {
    static MICRO: OnceLock<String> = OnceLock::new();
    MICRO.get_or_init(|| {
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
        p(&micro).to_string()
    })
}

/// A text file of `repeats` times the quick brown fox, written once per
/// test process for each count.
fn fox_text(repeats: usize) -> PathBuf {
    static WRITTEN: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    let f = tmp(&format!("fox-{repeats}.txt"));
    let mut written = WRITTEN.lock().unwrap();
    if !written.contains(&repeats) {
        std::fs::write(
            &f,
            "The quick brown fox jumps over the lazy dog. ".repeat(repeats),
        )
        .unwrap();
        written.push(repeats);
    }
    f
}

/// `run`, as llama-cli takes it.
mod run {
    use super::*;

    /// The greedy run of the capital prompt (8 tokens, 2 threads).
    fn greedy_capital(m: &str) -> String {
        ok(&bitnet(&[
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
        ]))
    }

    #[test]
    fn greedy_prints_the_prompt_and_a_continuation() {
        let Some(m) = tiny() else { return };
        let greedy = greedy_capital(p(&m));
        assert!(greedy.starts_with("The capital of France is") && greedy.len() > 24);
    }

    /// -f reads the prompt from a file.
    #[test]
    fn f_reads_the_prompt_from_a_file() {
        let Some(m) = tiny() else { return };
        let m = p(&m);
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
        assert_eq!(from_file, greedy_capital(m));
    }

    /// -s is the seed: the same seed gives the same sample, and it is not a system prompt.
    #[test]
    fn s_is_the_seed() {
        let Some(m) = tiny() else { return };
        let m = p(&m);
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
    }

    /// Penalty flags parse with their llama.cpp names.
    #[test]
    fn penalty_flags_take_llama_cpp_names() {
        let Some(m) = tiny() else { return };
        ok(&bitnet(&[
            "run",
            "-m",
            p(&m),
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
    }

    /// -sys sends the prompt as a chat turn (the prompt is not echoed).
    #[test]
    fn sys_sends_the_prompt_as_a_chat_turn() {
        let Some(m) = tiny() else { return };
        let chat = ok(&bitnet(&[
            "run",
            "-m",
            p(&m),
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
    }

    /// -cnv: conversation mode reads turns from stdin.
    #[test]
    fn cnv_reads_turns_from_stdin() {
        let Some(m) = tiny() else { return };
        let conv = bitnet_stdin(
            &["run", "-m", p(&m), "-cnv", "-n", "4", "--temp", "0"],
            "Hello\n\n",
        );
        ok(&conv);
    }
}

/// The other commands on the tiny fixture (bench on the micro model).
mod other_commands {
    use super::*;

    #[test]
    fn tokenize_prints_the_ids() {
        let Some(m) = tiny() else { return };
        assert_eq!(
            ok(&bitnet(&[
                "tokenize",
                "-m",
                p(&m),
                "-p",
                "The capital of France is"
            ]))
            .trim(),
            "[128000,791,6864,315,9822,374]"
        );
    }

    #[test]
    fn eval_prints_a_line_per_position() {
        let Some(m) = tiny() else { return };
        let eval = ok(&bitnet(&[
            "eval",
            "-m",
            p(&m),
            "-p",
            "Hello world",
            "--top",
            "3",
        ]));
        assert_eq!(eval.lines().count(), 3);
        assert!(eval.lines().all(|l| l.starts_with("{\"pos\":")));
    }

    #[test]
    fn eval_takes_token_ids() {
        let Some(m) = tiny() else { return };
        let eval_ids = ok(&bitnet(&[
            "eval",
            "-m",
            p(&m),
            "--tokens",
            "128000,9906",
            "--top",
            "2",
        ]));
        assert_eq!(eval_ids.lines().count(), 2);
    }

    #[test]
    fn chat_answers_turns_from_stdin() {
        let Some(m) = tiny() else { return };
        let chat = bitnet_stdin(
            &[
                "chat",
                "-m",
                p(&m),
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
    }

    #[test]
    fn perplexity_prints_the_final_estimate() {
        let Some(m) = tiny() else { return };
        let f = fox_text(20);
        let ppl = ok(&bitnet(&[
            "perplexity",
            "-m",
            p(&m),
            "-f",
            p(&f),
            "-c",
            "32",
        ]));
        assert!(ppl.contains("Final estimate: PPL = "), "{ppl}");
    }

    #[test]
    fn info_prints_the_config() {
        let Some(m) = tiny() else { return };
        let info = ok(&bitnet(&["info", "-m", p(&m)]));
        assert!(info.contains("model: Config"), "{info}");
    }

    #[test]
    fn gen_model_writes_a_model() {
        let micro = tmp("gen-model-micro.gguf");
        ok(&bitnet(&[
            "gen-model",
            "--shape",
            "micro",
            "-o",
            p(&micro),
            "-s",
            "7",
        ]));
    }

    #[test]
    fn bench_prints_json() {
        let bench = ok(&bitnet(&[
            "bench",
            "-m",
            micro(),
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
}

/// Exit status 2: the command line.
mod usage_errors_exit_2 {
    use super::*;

    #[test]
    fn a_seed_that_is_not_a_number() {
        let Some(m) = tiny() else { return };
        fails(
            &bitnet(&["run", "-m", p(&m), "-p", "x", "-s", "forty-two"]),
            2,
            "invalid value",
        );
    }

    #[test]
    fn run_without_a_prompt() {
        let Some(m) = tiny() else { return };
        fails(&bitnet(&["run", "-m", p(&m)]), 2, "give -p TEXT or -f FILE");
    }

    #[test]
    fn top_p_of_zero() {
        let Some(m) = tiny() else { return };
        fails(
            &bitnet(&["run", "-m", p(&m), "-p", "x", "--top-p", "0"]),
            2,
            "--top-p",
        );
    }

    #[test]
    fn repeat_last_n_below_minus_one() {
        let Some(m) = tiny() else { return };
        fails(
            &bitnet(&["run", "-m", p(&m), "-p", "x", "--repeat-last-n", "-2"]),
            2,
            "--repeat-last-n",
        );
    }

    #[test]
    fn a_batch_of_zero() {
        let Some(m) = tiny() else { return };
        fails(
            &bitnet(&["run", "-m", p(&m), "-p", "x", "-b", "0"]),
            2,
            "batch",
        );
    }

    #[test]
    fn an_unknown_shape() {
        fails(
            &bitnet(&["gen-model", "--shape", "huge", "-o", p(&tmp("x.gguf"))]),
            2,
            "unknown shape",
        );
    }

    #[test]
    fn np_is_llama_servers_spelling_of_parallel() {
        fails(
            &bitnet(&["serve", "-m", "x.gguf", "-np", "many"]),
            2,
            "--parallel",
        );
    }

    #[test]
    fn an_unknown_subcommand() {
        fails(&bitnet(&["frobnicate"]), 2, "unrecognized subcommand");
    }
}

/// Exit status 3: the model file.
mod model_errors_exit_3 {
    use super::*;

    const CARGO_TOML: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

    #[test]
    fn a_missing_file() {
        fails(
            &bitnet(&["run", "-m", "/nonexistent/model.gguf", "-p", "x"]),
            3,
            "model.gguf",
        );
    }

    #[test]
    fn run_on_a_file_that_is_not_a_gguf() {
        fails(
            &bitnet(&["run", "-m", CARGO_TOML, "-p", "x"]),
            3,
            "not a GGUF",
        );
    }

    #[test]
    fn tokenize_on_a_file_that_is_not_a_gguf() {
        fails(
            &bitnet(&["tokenize", "-m", CARGO_TOML, "-p", "x"]),
            3,
            "not a GGUF",
        );
    }

    #[test]
    fn a_truncated_gguf() {
        let Some(m) = tiny() else { return };
        let trunc = tmp("truncated.gguf");
        let bytes = std::fs::read(&m).unwrap();
        std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
        fails(&bitnet(&["run", "-m", p(&trunc), "-p", "x"]), 3, "");
    }
}

/// Exit status 4: the input.
mod input_errors_exit_4 {
    use super::*;

    #[test]
    fn a_prompt_longer_than_the_context() {
        let Some(m) = tiny() else { return };
        let long = "word ".repeat(200);
        fails(
            &bitnet(&["run", "-m", p(&m), "-p", &long, "-c", "64"]),
            4,
            "longer than the context",
        );
    }

    #[test]
    fn a_missing_prompt_file() {
        let Some(m) = tiny() else { return };
        fails(
            &bitnet(&["run", "-m", p(&m), "-f", "/nonexistent/prompt.txt"]),
            4,
            "prompt.txt",
        );
    }

    #[test]
    fn a_token_outside_the_vocabulary() {
        let Some(m) = tiny() else { return };
        fails(
            &bitnet(&["eval", "-m", p(&m), "--tokens", "1,999999999"]),
            4,
            "outside the vocabulary",
        );
    }

    #[test]
    fn a_text_shorter_than_one_window() {
        let Some(m) = tiny() else { return };
        let short = tmp("short.txt");
        std::fs::write(&short, "Too short.").unwrap();
        fails(
            &bitnet(&["perplexity", "-m", p(&m), "-f", p(&short), "-c", "64"]),
            4,
            "fewer than one window",
        );
    }
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
/// format. One module per family, one test per command.
mod every_family {
    use super::*;

    /// A family's fixture with bitnet.cpp's first reference prompt on it.
    struct Fixture {
        model: PathBuf,
        prompt: String,
        /// bitnet.cpp's tokens of the prompt.
        tokens: Vec<u64>,
        /// bitnet.cpp's first 8 greedy tokens after it.
        greedy: Vec<u64>,
    }

    impl Fixture {
        fn load(name: &str) -> Option<Fixture> {
            let Some(dir) = bitnet_stfma::testdata_dir() else {
                eprintln!("SKIPPED: ../shared/testdata not found");
                return None;
            };
            let refs = std::fs::read_to_string(dir.join(format!("{name}.ref.jsonl"))).unwrap();
            let first: serde_json::Value =
                serde_json::from_str(refs.lines().next().unwrap()).unwrap();
            let ids = |v: &serde_json::Value| -> Vec<u64> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap())
                    .collect()
            };
            let greedy: Vec<u64> = first["greedy"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["token"].as_u64().unwrap())
                .take(8)
                .collect();
            Some(Fixture {
                model: dir.join(format!("{name}.gguf")),
                prompt: first["prompt"].as_str().unwrap().to_string(),
                tokens: ids(&first["tokens"]),
                greedy,
            })
        }

        fn m(&self) -> &str {
            p(&self.model)
        }
    }

    fn tokenize_gives_bitnet_cpps_tokens(name: &str) {
        let Some(f) = Fixture::load(name) else { return };
        let got = ok(&bitnet(&["tokenize", "-m", f.m(), "-p", &f.prompt]));
        let want: Vec<String> = f.tokens.iter().map(u64::to_string).collect();
        assert_eq!(got.trim(), format!("[{}]", want.join(",")), "{name}");
    }

    fn greedy_run_prints_bitnet_cpps_continuation(name: &str) {
        let Some(f) = Fixture::load(name) else { return };
        let (m, prompt) = (f.m(), f.prompt.as_str());
        let run = ok(&bitnet(&[
            "run", "-m", m, "-p", prompt, "-n", "8", "--temp", "0", "-t", "2",
        ]));
        assert!(run.starts_with(prompt), "{name}: {run:?}");
        // (the command ends its output with a newline of its own)
        let run = run.strip_suffix('\n').unwrap_or(&run);
        // The printed continuation is bitnet.cpp's greedy tokens' bytes.
        let g = bitnet_stfma::gguf::Gguf::open(m).unwrap();
        let tok = bitnet_stfma::tokenizer::Tokenizer::from_gguf(&g).unwrap();
        let bytes: Vec<u8> = f
            .greedy
            .iter()
            .flat_map(|&t| tok.token_to_bytes(t as u32, false).to_vec())
            .collect();
        let want = format!("{prompt}{}", String::from_utf8_lossy(&bytes));
        assert_eq!(run, want, "{name}");
    }

    fn info_names_the_family(name: &str, family: &str) {
        let Some(f) = Fixture::load(name) else { return };
        let info = ok(&bitnet(&["info", "-m", f.m()]));
        assert!(info.contains(family), "{name}: {info}");
    }

    fn eval_prints_a_line_per_prompt_token(name: &str) {
        let Some(f) = Fixture::load(name) else { return };
        let eval = ok(&bitnet(&[
            "eval",
            "-m",
            f.m(),
            "-p",
            &f.prompt,
            "--top",
            "2",
        ]));
        assert_eq!(eval.lines().count(), f.tokens.len(), "{name}: {eval}");
    }

    fn perplexity_runs(name: &str) {
        let Some(f) = Fixture::load(name) else { return };
        let file = fox_text(20);
        let ppl = bitnet(&["perplexity", "-m", f.m(), "-f", p(&file), "-c", "32"]);
        let out = ok(&ppl) + &text(&ppl.stderr);
        assert!(out.contains("perplexity"), "{name}: {out}");
    }

    fn chat_answers(name: &str) {
        let Some(f) = Fixture::load(name) else { return };
        let chat = bitnet_stdin(&["chat", "-m", f.m(), "-n", "4", "--temp", "0"], "Hi\n");
        ok(&chat);
    }

    macro_rules! family_tests {
        ($($module:ident: $name:literal names $family:literal;)*) => {$(
            mod $module {
                #[test]
                fn tokenize_gives_bitnet_cpps_tokens() {
                    super::tokenize_gives_bitnet_cpps_tokens($name);
                }
                #[test]
                fn greedy_run_prints_bitnet_cpps_continuation() {
                    super::greedy_run_prints_bitnet_cpps_continuation($name);
                }
                #[test]
                fn info_names_the_family() {
                    super::info_names_the_family($name, $family);
                }
                #[test]
                fn eval_prints_a_line_per_prompt_token() {
                    super::eval_prints_a_line_per_prompt_token($name);
                }
                #[test]
                fn perplexity_runs() {
                    super::perplexity_runs($name);
                }
                #[test]
                fn chat_answers() {
                    super::chat_answers($name);
                }
            }
        )*};
    }

    family_tests! {
        bitnet_spm_tiny: "bitnet-spm-tiny" names "1bitLLM";
        llama_i2s_tiny: "llama-i2s-tiny" names "Llama";
        falcon3_i2s_tiny: "falcon3-i2s-tiny" names "Llama";
    }
}

/// Every command that writes to stdout, against a closed pipe, a reader
/// that leaves early and a full disk: one module per command, one test per
/// kind of stdout.
mod stdout {
    use super::*;

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

    /// The arguments and stdin of the stdout command `name` on the tiny
    /// fixture, the micro model and a text of 40 sentences.
    fn command(name: &str) -> Option<(Vec<String>, &'static str)> {
        let m = tiny()?;
        let text = fox_text(40);
        stdout_commands(p(&m), micro(), p(&text))
            .into_iter()
            .find(|c| c.0 == name)
            .map(|(_, args, input)| (args, input))
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
    /// command ends quietly, killed by SIGPIPE as a C tool is, with no panic
    /// and no message.
    #[cfg(unix)]
    fn closed_stdout_ends_it_quietly(name: &str) {
        use std::os::unix::process::ExitStatusExt;
        let Some((args, input)) = command(name) else {
            return;
        };
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

    /// A reader that takes a little and then closes (`| head -c 1`): the
    /// command either finished first or ends by SIGPIPE; never a panic.
    /// (Not for loadgen: it has no server to finish against.)
    #[cfg(unix)]
    fn reader_closing_early_never_panics(name: &str) {
        use std::io::Read;
        use std::os::unix::process::ExitStatusExt;
        let Some((args, input)) = command(name) else {
            return;
        };
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

    /// Any other write error is an error with its message and exit status 1.
    #[cfg(target_os = "linux")]
    fn full_disk_is_an_error(name: &str) {
        let Some((args, input)) = command(name) else {
            return;
        };
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

    macro_rules! stdout_tests {
        (@closed_and_full $cmd:ident) => {
            #[cfg(unix)]
            #[test]
            fn closed_stdout_ends_it_quietly() {
                super::closed_stdout_ends_it_quietly(stringify!($cmd));
            }
            #[cfg(target_os = "linux")]
            #[test]
            fn full_disk_is_an_error() {
                super::full_disk_is_an_error(stringify!($cmd));
            }
        };
        ($($cmd:ident),* ; without an early reader: $($no_reader:ident),*) => {
            $(
                mod $cmd {
                    stdout_tests!(@closed_and_full $cmd);
                    #[cfg(unix)]
                    #[test]
                    fn reader_closing_early_never_panics() {
                        super::reader_closing_early_never_panics(stringify!($cmd));
                    }
                }
            )*
            $(
                mod $no_reader {
                    stdout_tests!(@closed_and_full $no_reader);
                }
            )*
            /// The commands tested here.
            const TESTED: &[&str] = &[$(stringify!($cmd),)* $(stringify!($no_reader)),*];
        };
    }

    stdout_tests!(run, chat, tokenize, eval, perplexity, bench, info; without an early reader: loadgen);

    /// A command added to the list has its tests.
    #[test]
    fn every_stdout_command_is_tested() {
        let listed: Vec<&str> = stdout_commands("m", "micro", "text")
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(listed, TESTED);
    }
}

/// `bitnet convert` and `-m DIR`, on checkpoints built here by hand (not by
/// the library's own exporter): a byte-level BPE vocabulary, random master
/// or packed weights.
mod convert {
    use super::*;
    use serde_json::json;

    /// A small deterministic generator.
    struct Rng(u64);
    impl Rng {
        fn f(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        }
    }

    const DIM: usize = 128;
    const FFN: usize = 256;
    const VOCAB: usize = 258;

    fn safetensors(path: &Path, tensors: &[(String, &str, Vec<usize>, Vec<u8>)]) {
        let mut h = serde_json::Map::new();
        let mut off = 0;
        for (n, dt, shape, data) in tensors {
            h.insert(
                n.clone(),
                json!({"dtype": dt, "shape": shape, "data_offsets": [off, off + data.len()]}),
            );
            off += data.len();
        }
        let h = serde_json::to_vec(&h).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        for t in tensors {
            out.extend_from_slice(&t.3);
        }
        std::fs::write(path, out).unwrap();
    }

    fn bf16(v: impl Iterator<Item = f32>) -> Vec<u8> {
        v.flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
            .collect()
    }

    /// GPT-2's byte-to-character map.
    fn byte_char(b: u8) -> char {
        let printable = |b: u32| {
            (33..=126).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
        };
        if printable(b as u32) {
            return char::from_u32(b as u32).unwrap();
        }
        let n = (0..b as u32).filter(|&c| !printable(c)).count() as u32;
        char::from_u32(256 + n).unwrap()
    }

    /// A checkpoint directory: `llama` = LlamaForCausalLM with packed
    /// weights in two shards, else BitNetForCausalLM with BF16 master weights.
    fn checkpoint(name: &str, llama: bool) -> PathBuf {
        let dir = tmp(name);
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = json!({
            "architectures": [if llama { "LlamaForCausalLM" } else { "BitNetForCausalLM" }],
            "hidden_act": if llama { "silu" } else { "relu2" },
            "hidden_size": DIM, "intermediate_size": FFN, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": VOCAB,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "tie_word_embeddings": !llama, "bos_token_id": 256, "eos_token_id": 257,
        });
        if llama {
            config["quantization_config"] = json!({"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"});
        }
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let vocab: serde_json::Map<String, serde_json::Value> = (0..=255u8)
            .map(|b| (byte_char(b).to_string(), json!(b as u32)))
            .collect();
        let tokenizer = json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 256, "content": "<|begin_of_text|>", "special": true},
                {"id": 257, "content": "<|end_of_text|>", "special": true}],
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
            "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": vocab, "merges": [], "ignore_merges": true},
        });
        std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            json!({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}).to_string(),
        )
        .unwrap();
        let mut rng = Rng(if llama { 11 } else { 5 });
        let mut ts = vec![
            (
                "model.embed_tokens.weight".to_string(),
                "BF16",
                vec![VOCAB, DIM],
                bf16((0..VOCAB * DIM).map(|_| rng.f())),
            ),
            (
                "model.norm.weight".into(),
                "BF16",
                vec![DIM],
                bf16((0..DIM).map(|_| 1.0 + rng.f() * 0.2)),
            ),
        ];
        if llama {
            ts.push((
                "lm_head.weight".into(),
                "BF16",
                vec![VOCAB, DIM],
                bf16((0..VOCAB * DIM).map(|_| rng.f())),
            ));
        }
        let l = "model.layers.0.";
        for (n, len) in [("input_layernorm", DIM), ("post_attention_layernorm", DIM)] {
            ts.push((
                format!("{l}{n}.weight"),
                "BF16",
                vec![len],
                bf16((0..len).map(|_| 1.0 + rng.f() * 0.2)),
            ));
        }
        if !llama {
            ts.push((
                format!("{l}self_attn.attn_sub_norm.weight"),
                "BF16",
                vec![DIM],
                bf16((0..DIM).map(|_| 1.0 + rng.f() * 0.2)),
            ));
            ts.push((
                format!("{l}mlp.ffn_sub_norm.weight"),
                "BF16",
                vec![FFN],
                bf16((0..FFN).map(|_| 1.0 + rng.f() * 0.2)),
            ));
        }
        for (m, rows, cols) in [
            ("self_attn.q_proj", DIM, DIM),
            ("self_attn.k_proj", 64, DIM),
            ("self_attn.v_proj", 64, DIM),
            ("self_attn.o_proj", DIM, DIM),
            ("mlp.gate_proj", FFN, DIM),
            ("mlp.up_proj", FFN, DIM),
            ("mlp.down_proj", DIM, FFN),
        ] {
            if llama {
                let packed: Vec<u8> = (0..rows / 4 * cols)
                    .map(|_| {
                        (0..4)
                            .map(|k| (((rng.f() + 0.5) * 2.999) as u8) << (2 * k))
                            .sum()
                    })
                    .collect();
                ts.push((format!("{l}{m}.weight"), "U8", vec![rows / 4, cols], packed));
                ts.push((
                    format!("{l}{m}.weight_scale"),
                    "BF16",
                    vec![1],
                    bf16([0.05f32].into_iter()),
                ));
            } else {
                ts.push((
                    format!("{l}{m}.weight"),
                    "BF16",
                    vec![rows, cols],
                    bf16((0..rows * cols).map(|_| rng.f() * 0.1)),
                ));
            }
        }
        if llama {
            let (a, b) = ts.split_at(5);
            let mut map = serde_json::Map::new();
            for (file, part) in [
                ("model-00001-of-00002.safetensors", a),
                ("model-00002-of-00002.safetensors", b),
            ] {
                safetensors(&dir.join(file), part);
                for t in part {
                    map.insert(t.0.clone(), json!(file));
                }
            }
            std::fs::write(
                dir.join("model.safetensors.index.json"),
                json!({"weight_map": map}).to_string(),
            )
            .unwrap();
        } else {
            safetensors(&dir.join("model.safetensors"), &ts);
        }
        dir
    }

    fn greedy(m: &str) -> String {
        ok(&bitnet(&[
            "run",
            "-m",
            m,
            "-p",
            "Hello there",
            "-n",
            "6",
            "--temp",
            "0",
        ]))
    }

    #[test]
    fn a_converted_file_and_the_directory_give_the_same_tokens() {
        for (name, llama) in [("ck-bitnet", false), ("ck-llama", true)] {
            let dir = checkpoint(name, llama);
            let out = tmp(&format!("{name}.gguf"));
            let o = bitnet(&["convert", p(&dir), "--outfile", p(&out)]);
            ok(&o);
            assert!(text(&o.stderr).contains("wrote"), "{}", text(&o.stderr));
            assert_eq!(greedy(p(&out)), greedy(p(&dir)), "{name}");
            let info = ok(&bitnet(&["info", "-m", p(&out)]));
            let arch = if llama { "llama" } else { "bitnet-b1.58" };
            assert!(
                info.contains(&format!("general.architecture = String(\"{arch}\")")),
                "{info}"
            );
            assert!(info.contains("I2_S"), "{info}");
            let ids = ok(&bitnet(&["tokenize", "-m", p(&dir), "-p", "Hi"]));
            assert_eq!(ids.trim(), "[256,72,105]");
        }
    }

    #[test]
    fn head_and_outtype_flags() {
        let dir = checkpoint("ck-flags", false);
        let out = tmp("ck-flags-q8.gguf");
        ok(&bitnet(&[
            "convert",
            p(&dir),
            "--outfile",
            p(&out),
            "--head",
            "q8_0",
        ]));
        assert!(ok(&bitnet(&["info", "-m", p(&out)])).contains("Q8_0"));
        let out16 = tmp("ck-flags-f16.gguf");
        ok(&bitnet(&[
            "convert",
            p(&dir),
            "--outfile",
            p(&out16),
            "--outtype",
            "f16",
        ]));
        let info = ok(&bitnet(&["info", "-m", p(&out16)]));
        let q = info
            .lines()
            .find(|l| l.contains("blk.0.attn_q.weight"))
            .unwrap();
        assert!(
            info.contains("general.file_type = U32(1)") && q.contains("F16"),
            "{info}"
        );
        // rows of 128 are not Q6_K blocks of 256: refused, nothing written
        let q6 = tmp("ck-flags-q6.gguf");
        fails(
            &bitnet(&["convert", p(&dir), "--outfile", p(&q6), "--head", "q6_k"]),
            3,
            "Q6K",
        );
        assert!(!q6.exists());
        fails(
            &bitnet(&["convert", p(&dir), "--outfile", p(&q6), "--outtype", "q4"]),
            2,
            "q4",
        );
    }

    #[test]
    fn bad_checkpoints_exit_3_and_leave_nothing() {
        let out_dir = tmp("ck-bad-out");
        std::fs::create_dir_all(&out_dir).unwrap();
        let out = out_dir.join("m.gguf");
        let convert = |dir: &Path| bitnet(&["convert", p(dir), "--outfile", p(&out)]);
        fails(
            &convert(Path::new("/nonexistent/ckpt")),
            3,
            "/nonexistent/ckpt",
        );
        let dir = checkpoint("ck-bad-arch", false);
        let c = std::fs::read_to_string(dir.join("config.json")).unwrap();
        std::fs::write(
            dir.join("config.json"),
            c.replace("BitNetForCausalLM", "MambaForCausalLM"),
        )
        .unwrap();
        fails(&convert(&dir), 3, "MambaForCausalLM");
        fails(
            &bitnet(&["run", "-m", p(&dir), "-p", "x"]),
            3,
            "MambaForCausalLM",
        );
        let dir = checkpoint("ck-bad-trunc", false);
        let st = dir.join("model.safetensors");
        let len = std::fs::metadata(&st).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&st)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        fails(&convert(&dir), 3, "model.safetensors");
        let dir = checkpoint("ck-bad-tok", false);
        std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
        fails(&convert(&dir), 3, "tokenizer");
        let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

/// `bitnet loadgen` reads llama-server's own stream format (bitnet.cpp's
/// `/v1/completions`: `{"content", "stop"}` chunks, no `[DONE]`, the
/// connection closed without the last chunk of the chunked body) as well
/// as OpenAI's: a stand-in server on loopback answers each request so.
#[test]
fn loadgen_reads_llama_servers_own_stream() {
    use std::io::{BufRead, BufReader, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            // The request: headers, then the body by its length.
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
            for chunk in [
                r#"data: {"content":"Par","stop":false}"#,
                r#"data: {"content":"is","stop":false}"#,
                r#"data: {"content":"!","stop":false}"#,
                r#"data: {"content":"","stop":true,"tokens_predicted":3}"#,
            ] {
                let data = format!("{chunk}\n\n");
                let _ = write!(c, "{:x}\r\n{data}\r\n", data.len());
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            // (no terminating chunk: the connection just closes)
        }
    });
    let url = format!("http://127.0.0.1:{port}");
    let o = bitnet(&["loadgen", "--url", &url, "-k", "1,2", "-r", "2", "-n", "3"]);
    let out = ok(&o);
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("| 1 ") || l.starts_with("| 2 "))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for r in rows {
        let tok_s: f64 = r.split('|').nth(3).unwrap().trim().parse().unwrap();
        assert!(tok_s > 0.0, "{r}");
    }
}
