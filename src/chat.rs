//! Chat prompt formats, detected from a GGUF's `tokenizer.chat_template`
//! the way llama.cpp detects its built-in templates (no Jinja engine):
//!
//! - `bitnet` (bitnet.cpp's built-in, the default): a turn renders as
//!   `System: {system}User: {user}<|eot_id|>Assistant: `, and the assistant's
//!   turn ends with `<|eot_id|>`;
//! - `llama3` (a template with `<|start_header_id|>`):
//!   `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>`;
//! - `falcon3` (a template with `<|assistant|>` and `<|user|>`):
//!   `<|role|>\n…\n`, the assistant's turn ended by the model's EOS;
//! - `falcon_e` (a file whose pre-tokenizer is `falcon_e`, or the template
//!   named so): `{role}{content}\n`, replies after `assistant\n`.

/// The turn format to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFormat {
    /// `System: …User: …<|eot_id|>Assistant: `
    Bitnet,
    /// `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>`
    Llama3,
    /// `<|system|>\n…\n<|user|>\n…\n<|assistant|>\n`
    Falcon3,
    /// `system…\nuser…\nassistant\n`
    FalconE,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant` (other roles render as `user`'s
    /// format does with their own name, where the format names roles).
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The default system prompt of `bitnet chat`.
pub const DEFAULT_SYSTEM: &str =
    "You are a helpful assistant. Think step by step before you answer.";

impl ChatFormat {
    /// A format by llama.cpp's template name.
    pub fn by_name(name: &str) -> Option<ChatFormat> {
        Some(match name {
            "bitnet" => ChatFormat::Bitnet,
            "llama3" => ChatFormat::Llama3,
            "falcon3" => ChatFormat::Falcon3,
            "falcon_e" => ChatFormat::FalconE,
            _ => return None,
        })
    }

    /// Picks the format for a model's `tokenizer.chat_template` (a Jinja
    /// template or a built-in name) and `tokenizer.ggml.pre`.
    pub fn detect(template: Option<&str>, pre: Option<&str>) -> ChatFormat {
        if let Some(f) = template.and_then(Self::by_name) {
            return f;
        }
        match template {
            Some(t) if t.contains("<|start_header_id|>") => ChatFormat::Llama3,
            Some(t) if t.contains("<|assistant|>") && t.contains("<|user|>") => ChatFormat::Falcon3,
            _ if pre == Some("falcon_e") => ChatFormat::FalconE,
            _ => ChatFormat::Bitnet,
        }
    }

    /// Text of one user turn (with the system prompt on the first turn)
    /// ending where the assistant's reply begins. Special tokens appear as
    /// text: encode with special-token parsing on. BOS is not included.
    pub fn user_turn(self, system: Option<&str>, user: &str) -> String {
        let mut msgs = Vec::new();
        if let Some(sys) = system.filter(|s| !s.is_empty()) {
            msgs.push(Message::new("system", sys));
        }
        msgs.push(Message::new("user", user));
        self.render(&msgs, "")
    }

    /// A whole conversation, then the start of the assistant's reply:
    /// system and user messages as the template renders them, assistant
    /// messages as the model would have written them (its reply, then
    /// [`ChatFormat::end_of_turn`]); `eos` is the EOS token's text.
    pub fn render(self, messages: &[Message], eos: &str) -> String {
        let mut s = String::new();
        for m in messages {
            let (role, c) = (m.role.as_str(), m.content.as_str());
            if role == "assistant" {
                s.push_str(self.reply_start());
                s.push_str(c);
                s.push_str(&self.end_of_turn(eos));
                continue;
            }
            match self {
                ChatFormat::Bitnet => match role {
                    "system" => s.push_str(&format!("System: {c}")),
                    _ => s.push_str(&format!("User: {c}<|eot_id|>")),
                },
                ChatFormat::Llama3 => s.push_str(&format!(
                    "<|start_header_id|>{role}<|end_header_id|>\n\n{c}<|eot_id|>"
                )),
                ChatFormat::Falcon3 => s.push_str(&format!("<|{role}|>\n{c}\n")),
                ChatFormat::FalconE => s.push_str(&format!("{role}{c}\n")),
            }
        }
        s.push_str(self.reply_start());
        s
    }

    /// What opens the assistant's reply.
    fn reply_start(self) -> &'static str {
        match self {
            ChatFormat::Bitnet => "Assistant: ",
            ChatFormat::Llama3 => "<|start_header_id|>assistant<|end_header_id|>\n\n",
            ChatFormat::Falcon3 => "<|assistant|>\n",
            ChatFormat::FalconE => "assistant\n",
        }
    }

    /// What closes the assistant's turn in the cache after its reply
    /// (generation stops at the end-of-generation token without feeding
    /// it): `eos` is the text of the vocabulary's EOS token.
    pub fn end_of_turn(self, eos: &str) -> String {
        match self {
            ChatFormat::Bitnet | ChatFormat::Llama3 => "<|eot_id|>".into(),
            ChatFormat::Falcon3 => format!("{eos}\n"),
            ChatFormat::FalconE => "\n".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitnet_is_the_default() {
        assert_eq!(ChatFormat::detect(None, None), ChatFormat::Bitnet);
    }

    #[test]
    fn bitnet_turns() {
        assert_eq!(
            ChatFormat::Bitnet.user_turn(Some("Be brief."), "Hi"),
            "System: Be brief.User: Hi<|eot_id|>Assistant: "
        );
        assert_eq!(
            ChatFormat::Bitnet.user_turn(None, "Hi"),
            "User: Hi<|eot_id|>Assistant: "
        );
    }

    #[test]
    fn llama3_is_known_by_its_template() {
        let t =
            "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{% endfor %}";
        assert_eq!(
            ChatFormat::detect(Some(t), Some("falcon_e")),
            ChatFormat::Llama3
        );
        assert!(ChatFormat::Llama3
            .user_turn(None, "Hi")
            .ends_with("assistant<|end_header_id|>\n\n"));
    }

    #[test]
    fn falcon3_is_known_by_its_template() {
        // Falcon3's template, as in its tokenizer_config (abridged).
        let f3 = "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}{% endif %}{% endfor %}";
        assert_eq!(
            ChatFormat::detect(Some(f3), Some("falcon3")),
            ChatFormat::Falcon3
        );
        assert_eq!(
            ChatFormat::Falcon3.user_turn(Some("Be brief."), "Hi"),
            "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
        );
        assert_eq!(
            ChatFormat::Falcon3.end_of_turn("<|endoftext|>"),
            "<|endoftext|>\n"
        );
    }

    #[test]
    fn falcon_e_is_known_by_its_pre_tokenizer_or_template() {
        assert_eq!(
            ChatFormat::detect(None, Some("falcon_e")),
            ChatFormat::FalconE
        );
        assert_eq!(
            ChatFormat::detect(Some("falcon_e"), None),
            ChatFormat::FalconE
        );
        assert_eq!(
            ChatFormat::FalconE.user_turn(None, "Hi"),
            "userHi\nassistant\n"
        );
    }

    /// A conversation: the reply is closed as the model closes it.
    #[test]
    fn a_conversation_closes_each_reply() {
        let conv = [
            Message::new("system", "S"),
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello"),
            Message::new("user", "Bye"),
        ];
        assert_eq!(
            ChatFormat::Bitnet.render(&conv, "</s>"),
            "System: SUser: Hi<|eot_id|>Assistant: Hello<|eot_id|>User: Bye<|eot_id|>Assistant: "
        );
        assert_eq!(
            ChatFormat::Falcon3.render(&conv, "<|endoftext|>"),
            "<|system|>\nS\n<|user|>\nHi\n<|assistant|>\nHello<|endoftext|>\n<|user|>\nBye\n<|assistant|>\n"
        );
        assert!(ChatFormat::Llama3
            .render(&conv, "")
            .contains("<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>user"));
    }
}
