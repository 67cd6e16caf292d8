//! Chat prompt formats. bitnet.cpp's built-in `bitnet` template renders a
//! turn as `System: {system}User: {user}<|eot_id|>Assistant: ` and ends the
//! assistant's turn with `<|eot_id|>`. A GGUF whose `tokenizer.chat_template`
//! is the Llama-3 header template gets that format instead (detected the way
//! llama.cpp detects built-in templates; no Jinja engine).

/// The turn format to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFormat {
    /// `System: …User: …<|eot_id|>Assistant: `
    Bitnet,
    /// `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>`
    Llama3,
}

/// The default system prompt of `bitnet chat`.
pub const DEFAULT_SYSTEM: &str =
    "You are a helpful assistant. Think step by step before you answer.";

impl ChatFormat {
    /// Picks the format for a model's `tokenizer.chat_template`, if any.
    pub fn detect(template: Option<&str>) -> ChatFormat {
        match template {
            Some(t) if t.contains("<|start_header_id|>") => ChatFormat::Llama3,
            _ => ChatFormat::Bitnet,
        }
    }

    /// Text of one user turn (with the system prompt on the first turn)
    /// ending where the assistant's reply begins. Special tokens appear as
    /// text: encode with special-token parsing on. BOS is not included.
    pub fn user_turn(self, system: Option<&str>, user: &str) -> String {
        match self {
            ChatFormat::Bitnet => {
                let mut s = String::new();
                if let Some(sys) = system.filter(|s| !s.is_empty()) {
                    s.push_str("System: ");
                    s.push_str(sys);
                }
                s.push_str("User: ");
                s.push_str(user);
                s.push_str("<|eot_id|>Assistant: ");
                s
            }
            ChatFormat::Llama3 => {
                let mut s = String::new();
                if let Some(sys) = system.filter(|s| !s.is_empty()) {
                    s.push_str("<|start_header_id|>system<|end_header_id|>\n\n");
                    s.push_str(sys);
                    s.push_str("<|eot_id|>");
                }
                s.push_str("<|start_header_id|>user<|end_header_id|>\n\n");
                s.push_str(user);
                s.push_str("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
                s
            }
        }
    }

    /// What closes the assistant's turn in the cache when generation stopped
    /// without emitting it (e.g. at the token limit).
    pub fn end_of_turn(self) -> &'static str {
        "<|eot_id|>"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(ChatFormat::detect(None), ChatFormat::Bitnet);
        assert_eq!(
            ChatFormat::Bitnet.user_turn(Some("Be brief."), "Hi"),
            "System: Be brief.User: Hi<|eot_id|>Assistant: "
        );
        assert_eq!(
            ChatFormat::Bitnet.user_turn(None, "Hi"),
            "User: Hi<|eot_id|>Assistant: "
        );
        let t =
            "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{% endfor %}";
        assert_eq!(ChatFormat::detect(Some(t)), ChatFormat::Llama3);
        assert!(ChatFormat::Llama3
            .user_turn(None, "Hi")
            .ends_with("assistant<|end_header_id|>\n\n"));
    }
}
