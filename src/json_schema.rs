//! Structured output: a JSON schema (or "any JSON object") compiled to a
//! byte-level pushdown automaton that says which bytes may come next, and
//! sampling constrained by it, so that a generated text is JSON that
//! parses and validates.
//!
//! Supported: `type` (object, array, string, number, integer, boolean,
//! null, or a list of them), `properties` with `required` (in any order,
//! each at most once; a property not required may be left out),
//! `additionalProperties` (false, or an object without `properties` is
//! free-form), `items` with `minItems` / `maxItems`, `enum`, `const`,
//! `anyOf` / `oneOf` (the first branch that can start with the next byte
//! is taken), `$ref` into `$defs` / `definitions` (recursion included).
//! Annotations (`title`, `description`, `default`, `examples`, ...) are
//! ignored; other constraints (`pattern`, `minimum`, `format`, ...) are
//! refused, since the output could not be made to meet them.
//!
//! Whitespace between tokens is allowed (at most [`MAX_WS`] bytes in a
//! row), numbers have at most [`MAX_DIGITS`] digits in each part, and the
//! text ends with the value: once it is complete only the end of
//! generation is allowed.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::sampler::Sampler;
use crate::tokenizer::Tokenizer;

/// Most whitespace bytes in a row.
pub const MAX_WS: u8 = 16;
/// Most digits of a number's integer part, fraction and exponent each.
pub const MAX_DIGITS: u8 = 16;
/// Most properties of an object schema, and values of an `enum`.
pub const MAX_CHOICES: usize = 128;

type NodeId = u32;
/// An object's properties: each key's JSON text and its value's node.
type Props = [(Vec<u8>, NodeId)];

/// A compiled schema node.
#[derive(Debug, Clone)]
enum Node {
    /// Any JSON value.
    Any,
    /// An object with these properties (in order; JSON-escaped keys) and
    /// which of them are required.
    Object {
        props: Vec<(Vec<u8>, NodeId)>,
        required: Vec<bool>,
    },
    /// An object with any keys and values of `Any`.
    FreeObject,
    Array {
        items: NodeId,
        min: u32,
        max: u32,
    },
    String,
    Number {
        integer: bool,
    },
    /// One of these JSON texts (an `enum`, `const`, `true`/`false`/`null`).
    Literals(Vec<Vec<u8>>),
    /// The first branch that can start with the next byte.
    Union(Vec<NodeId>),
    /// Filled in after compiling (a `$ref` being compiled).
    Pending,
}

/// A compiled schema.
#[derive(Debug)]
pub struct Schema {
    nodes: Vec<Node>,
    root: NodeId,
}

/// Keywords that only annotate.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "$defs",
    "definitions",
    "strict",
    "name",
    "readOnly",
    "writeOnly",
    "deprecated",
];

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    refs: HashMap<String, NodeId>,
}

// The nodes every schema starts with.
const ANY: NodeId = 0;
const FREE_OBJECT: NodeId = 1;
const FREE_ARRAY: NodeId = 2;
const TRUE: NodeId = 3;
const FALSE: NodeId = 4;
const NULL: NodeId = 5;

fn builtins() -> Vec<Node> {
    vec![
        Node::Any,
        Node::FreeObject,
        Node::Array {
            items: ANY,
            min: 0,
            max: u32::MAX,
        },
        Node::Literals(vec![b"true".to_vec()]),
        Node::Literals(vec![b"false".to_vec()]),
        Node::Literals(vec![b"null".to_vec()]),
    ]
}

/// The bit mask of the first `n` (at most 128) choices.
fn first_bits(n: usize) -> u128 {
    if n >= 128 {
        u128::MAX
    } else {
        (1u128 << n) - 1
    }
}

impl Schema {
    /// Any JSON object (`response_format: json_object`).
    pub fn any_object() -> Schema {
        Schema {
            nodes: builtins(),
            root: FREE_OBJECT,
        }
    }

    /// Compiles a JSON schema; an unsupported keyword is an error that
    /// names it.
    pub fn compile(schema: &Value) -> Result<Schema> {
        let mut c = Compiler {
            root: schema,
            nodes: builtins(),
            refs: HashMap::new(),
        };
        let root = c.node(schema, "#", 0)?;
        let mut nodes = c.nodes;
        // Unions hold the nodes that read the first byte, in order: the
        // branches' branches in their place, a node that refers back to a
        // union being flattened left out (it can read no byte first).
        for i in 0..nodes.len() {
            if let Node::Union(_) = nodes[i] {
                let mut flat = Vec::new();
                let mut seen = vec![false; nodes.len()];
                flatten(&nodes, i as NodeId, &mut seen, &mut flat);
                if flat.is_empty() {
                    return Err(bad("#", "a $ref cycle that never reaches a value"));
                }
                nodes[i] = Node::Union(flat);
            }
        }
        Ok(Schema { nodes, root })
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }
}

/// The nodes that are not unions reachable from `id` through unions.
fn flatten(nodes: &[Node], id: NodeId, seen: &mut [bool], out: &mut Vec<NodeId>) {
    if std::mem::replace(&mut seen[id as usize], true) {
        return;
    }
    match &nodes[id as usize] {
        Node::Union(branches) => {
            for &b in branches {
                flatten(nodes, b, seen, out);
            }
        }
        _ => out.push(id),
    }
}

fn bad(at: &str, msg: impl std::fmt::Display) -> Error {
    Error::invalid(format!("schema at {at}: {msg}"))
}

impl Compiler<'_> {
    fn push(&mut self, n: Node) -> NodeId {
        self.nodes.push(n);
        (self.nodes.len() - 1) as NodeId
    }

    fn node(&mut self, s: &Value, at: &str, depth: usize) -> Result<NodeId> {
        if depth > 64 {
            return Err(bad(at, "nested too deeply"));
        }
        let obj = match s {
            Value::Bool(true) => return Ok(self.push(Node::Any)),
            Value::Object(o) => o,
            _ => return Err(bad(at, "a schema must be an object")),
        };
        if let Some(r) = obj.get("$ref") {
            let r = r.as_str().ok_or_else(|| bad(at, "$ref is not a string"))?;
            return self.reference(r, at, depth);
        }
        for k in obj.keys() {
            let known = ANNOTATIONS.contains(&k.as_str())
                || matches!(
                    k.as_str(),
                    "type"
                        | "properties"
                        | "required"
                        | "additionalProperties"
                        | "items"
                        | "minItems"
                        | "maxItems"
                        | "enum"
                        | "const"
                        | "anyOf"
                        | "oneOf"
                );
            if !known {
                return Err(bad(at, format!("the keyword '{k}' is not supported")));
            }
        }
        if let Some(v) = obj.get("const") {
            return Ok(self.push(Node::Literals(vec![literal(v)])));
        }
        if let Some(e) = obj.get("enum") {
            let e = e
                .as_array()
                .filter(|e| !e.is_empty() && e.len() <= MAX_CHOICES)
                .ok_or_else(|| bad(at, format!("enum must list 1 to {MAX_CHOICES} values")))?;
            return Ok(self.push(Node::Literals(e.iter().map(literal).collect())));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(list) = obj.get(key) {
                let list = list
                    .as_array()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| bad(at, format!("{key} must list schemas")))?;
                let mut ids = Vec::new();
                for (i, b) in list.iter().enumerate() {
                    ids.push(self.node(b, &format!("{at}/{key}/{i}"), depth + 1)?);
                }
                return Ok(self.push(Node::Union(ids)));
            }
        }
        match obj.get("type") {
            None if obj.contains_key("properties") => self.typed("object", obj, at, depth),
            None if obj.contains_key("items") => self.typed("array", obj, at, depth),
            None => Ok(self.push(Node::Any)),
            Some(Value::String(t)) => self.typed(t, obj, at, depth),
            Some(Value::Array(ts)) => {
                let mut ids = Vec::new();
                for t in ts {
                    let t = t.as_str().ok_or_else(|| bad(at, "type lists strings"))?;
                    ids.push(self.typed(t, obj, at, depth)?);
                }
                Ok(self.push(Node::Union(ids)))
            }
            Some(_) => Err(bad(at, "type must be a string or a list of strings")),
        }
    }

    fn reference(&mut self, r: &str, at: &str, depth: usize) -> Result<NodeId> {
        if let Some(&id) = self.refs.get(r) {
            return Ok(id);
        }
        let path = r
            .strip_prefix("#/$defs/")
            .map(|n| ("$defs", n))
            .or_else(|| r.strip_prefix("#/definitions/").map(|n| ("definitions", n)));
        let target = match (r, path) {
            ("#", _) => self.root,
            (_, Some((defs, name))) => self
                .root
                .get(defs)
                .and_then(|d| d.get(name))
                .ok_or_else(|| bad(at, format!("$ref '{r}' names no definition")))?,
            _ => {
                return Err(bad(
                    at,
                    format!("$ref '{r}': only #, #/$defs/NAME and #/definitions/NAME"),
                ))
            }
        };
        // A placeholder first: a recursive reference finds it.
        let id = self.push(Node::Pending);
        self.refs.insert(r.to_string(), id);
        let inner = self.node(target, r, depth + 1)?;
        self.nodes[id as usize] = Node::Union(vec![inner]);
        Ok(id)
    }

    fn typed(
        &mut self,
        t: &str,
        obj: &serde_json::Map<String, Value>,
        at: &str,
        depth: usize,
    ) -> Result<NodeId> {
        let node = match t {
            "string" => Node::String,
            "number" => Node::Number { integer: false },
            "integer" => Node::Number { integer: true },
            "boolean" => Node::Literals(vec![b"true".to_vec(), b"false".to_vec()]),
            "null" => Node::Literals(vec![b"null".to_vec()]),
            "array" => {
                let items = match obj.get("items") {
                    Some(i) => self.node(i, &format!("{at}/items"), depth + 1)?,
                    None => self.push(Node::Any),
                };
                let count = |k: &str| -> Result<Option<u32>> {
                    match obj.get(k) {
                        None => Ok(None),
                        Some(v) => v
                            .as_u64()
                            .filter(|&n| n <= u32::MAX as u64)
                            .map(|n| Some(n as u32))
                            .ok_or_else(|| bad(at, format!("{k} must be a count"))),
                    }
                };
                let (min, max) = (count("minItems")?.unwrap_or(0), count("maxItems")?);
                let max = max.unwrap_or(u32::MAX);
                if min > max {
                    return Err(bad(at, "minItems exceeds maxItems"));
                }
                Node::Array { items, min, max }
            }
            "object" => {
                let props = match obj.get("properties") {
                    None => None,
                    Some(Value::Object(p)) => Some(p),
                    Some(_) => return Err(bad(at, "properties must be an object")),
                };
                let extra = !matches!(obj.get("additionalProperties"), Some(Value::Bool(false)));
                match props {
                    None if extra => Node::FreeObject,
                    None => Node::Object {
                        props: vec![],
                        required: vec![],
                    },
                    Some(p) => {
                        if p.len() > MAX_CHOICES {
                            return Err(bad(at, format!("more than {MAX_CHOICES} properties")));
                        }
                        let required: Vec<&str> = match obj.get("required") {
                            None => vec![],
                            Some(Value::Array(r)) => r
                                .iter()
                                .map(|v| v.as_str().ok_or_else(|| bad(at, "required lists names")))
                                .collect::<Result<_>>()?,
                            Some(_) => return Err(bad(at, "required must be a list")),
                        };
                        if let Some(r) = required.iter().find(|r| !p.contains_key(**r)) {
                            return Err(bad(
                                at,
                                format!("required property '{r}' is not among the properties"),
                            ));
                        }
                        let mut out = Vec::with_capacity(p.len());
                        let mut req = Vec::with_capacity(p.len());
                        for (k, v) in p {
                            let id = self.node(v, &format!("{at}/properties/{k}"), depth + 1)?;
                            out.push((literal(&Value::String(k.clone())), id));
                            req.push(required.contains(&k.as_str()));
                        }
                        Node::Object {
                            props: out,
                            required: req,
                        }
                    }
                }
            }
            other => return Err(bad(at, format!("type '{other}' is not a JSON type"))),
        };
        Ok(self.push(node))
    }
}

/// A JSON value's text (serde_json's compact form).
fn literal(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

/// Where a number stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Start,
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

/// Where an object or array stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// After the opening bracket.
    Open,
    /// After a key (object): expects ':'.
    Key,
    /// A value is being read (a frame above this one).
    Value,
    /// After a value: expects ',' or the closing bracket.
    AfterValue,
    /// After a comma.
    Comma,
}

/// One level of the automaton's stack. `Copy`, so that a state is cloned
/// by a copy of its stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// A value of `node` is expected (after whitespace).
    Value {
        node: NodeId,
        ws: u8,
    },
    /// An object of `node` (an `Object` or `FreeObject`): the properties
    /// that came (bit i: property i), the last key's property, and where
    /// it stands.
    Object {
        node: NodeId,
        seen: u128,
        last: u32,
        stage: Stage,
        ws: u8,
    },
    /// An array of `node`: values read, and where it stands.
    Array {
        node: NodeId,
        count: u32,
        stage: Stage,
        ws: u8,
    },
    /// A string (a free key too): escape state (0 none, 1 after '\',
    /// 2..=5 hex digits of \u left + 1), UTF-8 continuation bytes left.
    Str {
        esc: u8,
        utf8: u8,
    },
    /// A key among the properties of object `node` still alive (bit i:
    /// property i), `pos + 1` bytes of its JSON text read.
    Key {
        node: NodeId,
        alive: u128,
        pos: u16,
    },
    /// One of the literals of `node` (bit i: literal i alive), `pos`
    /// bytes read.
    Lit {
        node: NodeId,
        alive: u128,
        pos: u16,
    },
    Number {
        integer: bool,
        at: Num,
        digits: u8,
    },
}

impl Frame {
    /// A frame between tokens (a value expected, an object or array)
    /// after one more whitespace byte: Some(None) past [`MAX_WS`] in a
    /// row; None for a frame inside a token (whitespace is its content
    /// or ends it).
    fn more_ws(self) -> Option<Option<Frame>> {
        let ws = match self {
            Frame::Value { ws, .. } | Frame::Object { ws, .. } | Frame::Array { ws, .. } => ws,
            _ => return None,
        };
        if ws >= MAX_WS {
            return Some(None);
        }
        let mut f = self;
        if let Frame::Value { ws, .. } | Frame::Object { ws, .. } | Frame::Array { ws, .. } = &mut f
        {
            *ws += 1;
        }
        Some(Some(f))
    }
}

/// What a frame did with a byte.
enum Step {
    /// Took it.
    Took,
    /// Took it and is complete (pop it).
    TookAndDone,
    /// Is complete without it (pop it, give the byte to the frame below).
    DoneWithout,
    /// Cannot take it.
    Reject,
}

/// The automaton's state over a schema: what may come next.
#[derive(Debug, Clone)]
pub struct JsonState {
    schema: Arc<Schema>,
    stack: Vec<Frame>,
}

impl JsonState {
    pub fn new(schema: Arc<Schema>) -> JsonState {
        let root = schema.root;
        JsonState {
            schema,
            stack: vec![Frame::Value { node: root, ws: 0 }],
        }
    }

    /// The value is complete: nothing more may come.
    pub fn is_done(&self) -> bool {
        self.stack.is_empty()
    }

    /// The text may end here: complete, or a number that could go on.
    pub fn can_end(&self) -> bool {
        match self.stack.as_slice() {
            [] => true,
            [f] => self.complete_without_more(f),
            _ => false,
        }
    }

    fn complete_without_more(&self, f: &Frame) -> bool {
        match *f {
            Frame::Number { at, .. } => {
                matches!(at, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
            }
            Frame::Lit { node, alive, pos } => self.any_complete(node, alive, pos),
            _ => false,
        }
    }

    fn literals(&self, node: NodeId) -> &[Vec<u8>] {
        match self.schema.node(node) {
            Node::Literals(l) => l,
            _ => &[],
        }
    }

    fn any_complete(&self, node: NodeId, alive: u128, pos: u16) -> bool {
        self.literals(node)
            .iter()
            .enumerate()
            .any(|(i, l)| alive >> i & 1 == 1 && l.len() == pos as usize)
    }

    /// Takes the bytes of a token; false (the state then undefined) when
    /// they cannot come here.
    pub fn feed_all(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.feed(b))
    }

    /// Takes one byte; false when it cannot come here.
    pub fn feed(&mut self, b: u8) -> bool {
        loop {
            let Some(&top) = self.stack.last() else {
                return false;
            };
            match self.step(top, b) {
                Step::Took => return true,
                Step::TookAndDone => {
                    self.pop_done();
                    return true;
                }
                Step::DoneWithout => self.pop_done(),
                Step::Reject => return false,
            }
        }
    }

    /// Pops the complete top frame and moves its parent on.
    fn pop_done(&mut self) {
        let done = self.stack.pop();
        let Some(parent) = self.stack.last_mut() else {
            return;
        };
        match parent {
            Frame::Object {
                seen,
                last,
                stage,
                ws,
                ..
            } => {
                *ws = 0;
                *stage = match (*stage, done) {
                    // A key: which property it was.
                    (Stage::Open | Stage::Comma, Some(Frame::Key { alive, .. })) => {
                        *last = alive.trailing_zeros();
                        *seen |= 1 << *last;
                        Stage::Key
                    }
                    (Stage::Open | Stage::Comma, _) => Stage::Key,
                    _ => Stage::AfterValue,
                };
            }
            Frame::Array {
                count, stage, ws, ..
            } => {
                *count += 1;
                *stage = Stage::AfterValue;
                *ws = 0;
            }
            _ => {}
        }
    }

    fn step(&mut self, top: Frame, b: u8) -> Step {
        let n = self.stack.len() - 1;
        if is_ws(b) {
            match top.more_ws() {
                Some(Some(f)) => {
                    self.stack[n] = f;
                    return Step::Took;
                }
                Some(None) => return Step::Reject,
                None => {}
            }
        }
        match top {
            Frame::Value { node, .. } => {
                match self.start(node, b) {
                    // An opening bracket or quote is taken by starting;
                    // a literal or a number reads its first byte.
                    Some(f @ (Frame::Lit { .. } | Frame::Number { .. })) => {
                        self.stack[n] = f;
                        self.step(f, b)
                    }
                    Some(f) => {
                        self.stack[n] = f;
                        Step::Took
                    }
                    None => Step::Reject,
                }
            }
            Frame::Str { esc, utf8 } => match string_byte(esc, utf8, b) {
                Some(None) => Step::TookAndDone,
                Some(Some((esc, utf8))) => {
                    self.stack[n] = Frame::Str { esc, utf8 };
                    Step::Took
                }
                None => Step::Reject,
            },
            Frame::Key { node, alive, pos } => {
                let Node::Object { props, .. } = self.schema.node(node) else {
                    return Step::Reject;
                };
                let pos = pos + 1;
                let (mut next, mut complete) = (0u128, None);
                for (i, (key, _)) in props.iter().enumerate() {
                    if alive >> i & 1 == 1 && key.get(pos as usize) == Some(&b) {
                        next |= 1 << i;
                        if key.len() == pos as usize + 1 {
                            complete = Some(i);
                        }
                    }
                }
                if next == 0 {
                    return Step::Reject;
                }
                // (keys are JSON texts with their quotes: a complete one is
                // no prefix of another)
                let alive = complete.map_or(next, |i| 1 << i);
                self.stack[n] = Frame::Key { node, alive, pos };
                if complete.is_some() {
                    Step::TookAndDone
                } else {
                    Step::Took
                }
            }
            Frame::Lit { node, alive, pos } => {
                let lits = self.literals(node);
                let mut next = 0u128;
                for (i, l) in lits.iter().enumerate() {
                    if alive >> i & 1 == 1 && l.get(pos as usize) == Some(&b) {
                        next |= 1 << i;
                    }
                }
                if next == 0 {
                    return if self.any_complete(node, alive, pos) {
                        Step::DoneWithout
                    } else {
                        Step::Reject
                    };
                }
                let pos = pos + 1;
                let longer = lits
                    .iter()
                    .enumerate()
                    .any(|(i, l)| next >> i & 1 == 1 && l.len() > pos as usize);
                self.stack[n] = Frame::Lit {
                    node,
                    alive: next,
                    pos,
                };
                if longer {
                    Step::Took
                } else {
                    Step::TookAndDone
                }
            }
            Frame::Number {
                integer,
                at,
                digits,
            } => match number_byte(integer, at, digits, b) {
                Some((at, digits)) => {
                    self.stack[n] = Frame::Number {
                        integer,
                        at,
                        digits,
                    };
                    Step::Took
                }
                None if self.complete_without_more(&top) => Step::DoneWithout,
                None => Step::Reject,
            },
            Frame::Object {
                node,
                seen,
                last,
                stage,
                ..
            } => self.object_byte(n, node, seen, last, stage, b),
            Frame::Array {
                node, count, stage, ..
            } => self.array_byte(n, node, count, stage, b),
        }
    }

    /// The frame a value of `node` starts with byte `b`, or None.
    fn start(&self, node: NodeId, b: u8) -> Option<Frame> {
        let any = |n: NodeId| Frame::Lit {
            node: n,
            alive: 1,
            pos: 0,
        };
        match self.schema.node(node) {
            Node::Any => match b {
                b'{' => self.start(FREE_OBJECT, b),
                b'[' => self.start(FREE_ARRAY, b),
                b'"' => Some(Frame::Str { esc: 0, utf8: 0 }),
                b'-' | b'0'..=b'9' => Some(number_start(false)),
                b't' => Some(any(TRUE)),
                b'f' => Some(any(FALSE)),
                b'n' => Some(any(NULL)),
                _ => None,
            },
            Node::Object { .. } | Node::FreeObject => (b == b'{').then_some(Frame::Object {
                node,
                seen: 0,
                last: 0,
                stage: Stage::Open,
                ws: 0,
            }),
            Node::Array { .. } => (b == b'[').then_some(Frame::Array {
                node,
                count: 0,
                stage: Stage::Open,
                ws: 0,
            }),
            Node::String => (b == b'"').then_some(Frame::Str { esc: 0, utf8: 0 }),
            Node::Number { integer } => {
                matches!(b, b'-' | b'0'..=b'9').then(|| number_start(*integer))
            }
            Node::Literals(l) => l.iter().any(|l| l.first() == Some(&b)).then(|| Frame::Lit {
                node,
                alive: first_bits(l.len()),
                pos: 0,
            }),
            // (flattened: no union among the branches)
            Node::Union(branches) => branches.iter().find_map(|&br| self.start(br, b)),
            Node::Pending => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn object_byte(
        &mut self,
        n: usize,
        node: NodeId,
        seen: u128,
        last: u32,
        stage: Stage,
        b: u8,
    ) -> Step {
        let set = |stack: &mut Vec<Frame>, stage: Stage| {
            stack[n] = Frame::Object {
                node,
                seen,
                last,
                stage,
                ws: 0,
            }
        };
        let schema = &*self.schema;
        let (free, props, required): (bool, &Props, &[bool]) = match schema.node(node) {
            Node::Object { props, required } => (false, props, required),
            _ => (true, &[], &[]),
        };
        let unseen = first_bits(props.len()) & !seen;
        let required_left = required
            .iter()
            .enumerate()
            .any(|(i, &r)| r && unseen >> i & 1 == 1);
        match (stage, b) {
            (Stage::Open | Stage::AfterValue, b'}') if !required_left => Step::TookAndDone,
            (Stage::Open | Stage::Comma, b'"') if free => {
                self.stack.push(Frame::Str { esc: 0, utf8: 0 });
                Step::Took
            }
            (Stage::Open | Stage::Comma, b'"') if unseen != 0 => {
                self.stack.push(Frame::Key {
                    node,
                    alive: unseen,
                    pos: 0,
                });
                Step::Took
            }
            (Stage::Key, b':') => {
                let value = if free { ANY } else { props[last as usize].1 };
                set(&mut self.stack, Stage::Value);
                self.stack.push(Frame::Value { node: value, ws: 0 });
                Step::Took
            }
            (Stage::AfterValue, b',') if free || unseen != 0 => {
                set(&mut self.stack, Stage::Comma);
                Step::Took
            }
            _ => Step::Reject,
        }
    }

    fn array_byte(&mut self, n: usize, node: NodeId, count: u32, stage: Stage, b: u8) -> Step {
        let Node::Array { items, min, max } = *self.schema.node(node) else {
            return Step::Reject;
        };
        let set = |stack: &mut Vec<Frame>, stage: Stage| {
            stack[n] = Frame::Array {
                node,
                count,
                stage,
                ws: 0,
            }
        };
        match (stage, b) {
            (Stage::Open | Stage::AfterValue, b']') if count >= min => Step::TookAndDone,
            (Stage::AfterValue, b',') if count < max => {
                set(&mut self.stack, Stage::Comma);
                Step::Took
            }
            (Stage::Open | Stage::Comma, _) if count < max => {
                set(&mut self.stack, Stage::Value);
                let v = Frame::Value { node: items, ws: 0 };
                self.stack.push(v);
                self.step(v, b)
            }
            _ => Step::Reject,
        }
    }
}

fn number_start(integer: bool) -> Frame {
    Frame::Number {
        integer,
        at: Num::Start,
        digits: 0,
    }
}

/// A string's next byte: None rejects it; Some(None) is the closing quote;
/// Some(Some(state)) goes on. The text stays valid UTF-8 (no overlong
/// forms, surrogates or code points past U+10FFFF: `utf8` is the
/// continuation bytes left, or 4-7 for a first one of a narrower range)
/// and a `\u` escape names no surrogate (`esc` 6: after `\uD`), so that
/// every string parses.
fn string_byte(esc: u8, utf8: u8, b: u8) -> Option<Option<(u8, u8)>> {
    let cont = |lo: u8, hi: u8, left: u8| (lo..=hi).contains(&b).then_some(Some((0, left)));
    match utf8 {
        1..=3 => return cont(0x80, 0xBF, utf8 - 1),
        4 => return cont(0xA0, 0xBF, 1),
        5 => return cont(0x80, 0x9F, 1),
        6 => return cont(0x90, 0xBF, 2),
        7 => return cont(0x80, 0x8F, 2),
        _ => {}
    }
    match esc {
        1 => match b {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(Some((0, 0))),
            b'u' => Some(Some((5, 0))),
            _ => None,
        },
        // The first hex digit: D begins the surrogates' range.
        5 if matches!(b, b'd' | b'D') => Some(Some((6, 0))),
        6 => matches!(b, b'0'..=b'7').then_some(Some((3, 0))),
        2..=5 => b
            .is_ascii_hexdigit()
            .then_some(Some((if esc == 2 { 0 } else { esc - 1 }, 0))),
        _ => match b {
            b'"' => Some(None),
            b'\\' => Some(Some((1, 0))),
            0..=0x1F | 0x7F => None,
            0x20..=0x7E => Some(Some((0, 0))),
            0xC2..=0xDF => Some(Some((0, 1))),
            0xE0 => Some(Some((0, 4))),
            0xED => Some(Some((0, 5))),
            0xE1..=0xEF => Some(Some((0, 2))),
            0xF0 => Some(Some((0, 6))),
            0xF1..=0xF3 => Some(Some((0, 3))),
            0xF4 => Some(Some((0, 7))),
            _ => None,
        },
    }
}

/// A number's next byte: its new state and digit count, or None.
fn number_byte(integer: bool, at: Num, digits: u8, b: u8) -> Option<(Num, u8)> {
    let digit = b.is_ascii_digit();
    let more = |d: u8| (d < MAX_DIGITS).then_some(d + 1);
    match (at, b) {
        (Num::Start, b'-') => Some((Num::Minus, 0)),
        (Num::Start | Num::Minus, b'0') => Some((Num::Zero, 1)),
        (Num::Start | Num::Minus, _) if digit => Some((Num::Int, 1)),
        (Num::Int, _) if digit => more(digits).map(|d| (Num::Int, d)),
        (Num::Zero | Num::Int, b'.') if !integer => Some((Num::Dot, 0)),
        (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') if !integer => Some((Num::Exp, 0)),
        (Num::Dot, _) if digit => Some((Num::Frac, 1)),
        (Num::Frac, _) if digit => more(digits).map(|d| (Num::Frac, d)),
        (Num::Exp, b'+' | b'-') => Some((Num::ExpSign, 0)),
        (Num::Exp | Num::ExpSign, _) if digit => Some((Num::ExpDigits, 1)),
        (Num::ExpDigits, _) if digit => (digits < 3).then_some((Num::ExpDigits, digits + 1)),
        _ => None,
    }
}

/// Sampling constrained to what a [`JsonState`] allows: a token whose
/// bytes cannot come next is never picked, and the end of generation
/// only where the value may end.
#[derive(Debug)]
pub struct Constrained {
    state: JsonState,
    scratch: JsonState,
    masked: Vec<f32>,
}

impl Constrained {
    pub fn new(schema: Arc<Schema>) -> Constrained {
        let state = JsonState::new(schema);
        Constrained {
            scratch: state.clone(),
            state,
            masked: Vec::new(),
        }
    }

    /// Whether token `id` may come next.
    pub fn allows(&mut self, tok: &Tokenizer, id: u32) -> bool {
        if tok.is_end_of_generation(id) {
            return self.state.can_end();
        }
        let bytes = tok.token_to_bytes(id, false);
        if bytes.is_empty() {
            return false;
        }
        self.scratch.stack.clone_from(&self.state.stack);
        self.scratch.feed_all(bytes)
    }

    /// Samples with `sampler` among the tokens allowed: the sampler's pick
    /// when allowed, else its pick with every token not allowed masked
    /// out. None when no token is allowed (the value cannot go on).
    pub fn sample(
        &mut self,
        sampler: &mut Sampler,
        tok: &Tokenizer,
        logits: &[f32],
    ) -> Option<u32> {
        let t = sampler.sample(logits);
        if self.allows(tok, t) {
            return Some(t);
        }
        let mut masked = std::mem::take(&mut self.masked);
        masked.clear();
        masked.extend_from_slice(logits);
        let mut any = false;
        for (id, l) in masked.iter_mut().enumerate() {
            if self.allows(tok, id as u32) {
                any = true;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        let t = any.then(|| sampler.sample(&masked));
        self.masked = masked;
        t.filter(|&t| self.allows(tok, t))
    }

    /// Takes token `id` (one [`Constrained::allows`] allowed).
    pub fn accept(&mut self, tok: &Tokenizer, id: u32) {
        if !tok.is_end_of_generation(id) {
            self.state.feed_all(tok.token_to_bytes(id, false));
        }
    }

    /// The value is complete.
    pub fn is_done(&self) -> bool {
        self.state.is_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn accepts(schema: &Schema, text: &str) -> bool {
        let schema = Arc::new(Schema {
            nodes: schema.nodes.clone(),
            root: schema.root,
        });
        let mut s = JsonState::new(schema);
        s.feed_all(text.as_bytes()) && s.can_end()
    }

    fn compile(v: Value) -> Schema {
        Schema::compile(&v).unwrap()
    }

    #[test]
    fn any_object() {
        let s = Schema::any_object();
        for ok in [
            "{}",
            "{ }",
            r#"{"a": 1, "b": [true, false, null, -0.5e+3, "x\"\u00e9"], "c": {"d": {}}}"#,
            "{\n  \"k\": \"é漢🎉\"\n}",
        ] {
            assert!(accepts(&s, ok), "{ok}");
            serde_json::from_str::<Value>(ok).unwrap();
        }
        for bad in [
            "[]",
            "{",
            "{a: 1}",
            "{\"a\" 1}",
            "{\"a\": 01}",
            "{\"a\": 1,}",
            "{\"a\": tru}",
            "{\"a\": \"\n\"}",
            "{\"a\": \"\\x\"}",
            "{} {}",
            "{\"a\": 1.}",
            "\"s\"",
        ] {
            assert!(!accepts(&s, bad), "{bad}");
        }
    }

    /// Strings stay valid UTF-8 and free of lone surrogate escapes, byte by
    /// byte, so that every one parses.
    #[test]
    fn strings_that_parse() {
        let s = Arc::new(compile(json!({"type": "string"})));
        let bytes_ok = |b: &[u8]| {
            let mut st = JsonState::new(s.clone());
            st.feed_all(b) && st.can_end()
        };
        for ok in ["\"\\u00e9\\uD7FF\\uE000\"", "\"é漢🎉\u{10FFFF}\""] {
            assert!(bytes_ok(ok.as_bytes()), "{ok}");
            serde_json::from_str::<Value>(ok).unwrap();
        }
        for bad in [
            &b"\"\\ud800\""[..],
            b"\"\\uDFFF\"",
            b"\"\xC0\xAF\"",         // overlong
            b"\"\xE0\x80\xAF\"",     // overlong
            b"\"\xED\xA0\x80\"",     // a surrogate
            b"\"\xF4\x90\x80\x80\"", // past U+10FFFF
            b"\"\xF0\x80\x80\x80\"", // overlong
            b"\"\x80\"",
        ] {
            assert!(!bytes_ok(bad), "{bad:?}");
            assert!(serde_json::from_slice::<Value>(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn schemas_constrain() {
        let s = compile(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "maxItems": 2},
                "ok": {"type": "boolean"},
                "score": {"type": ["number", "null"]},
            },
            "required": ["name", "ok"],
        }));
        for ok in [
            r#"{"name": "x", "ok": true}"#,
            r#"{"name": "x", "age": -12, "tags": ["a", 3], "ok": false, "score": null}"#,
            r#"{"name":"","tags":[],"ok":true,"score":1.5e3}"#,
            r#"{"ok": true, "age": 1, "name": "x"}"#, // any order
        ] {
            assert!(accepts(&s, ok), "{ok}");
        }
        for bad in [
            r#"{"ok": true}"#,                          // name required
            r#"{"name": "x"}"#,                         // ok required
            r#"{"name": "x", "ok": true, "extra": 1}"#, // no such property
            r#"{"name": "x", "age": 1.5, "ok": true}"#, // integer
            r#"{"name": 1, "ok": true}"#,
            r#"{"name": "x", "tags": ["c"], "ok": true}"#,
            r#"{"name": "x", "tags": ["a", "b", 3], "ok": true}"#, // maxItems
            r#"{"name": "x", "ok": 1}"#,
            r#"{"name": "x", "name": "y", "ok": true}"#, // once each
        ] {
            assert!(!accepts(&s, bad), "{bad}");
        }
        // Nested, with $defs and recursion.
        let s = compile(json!({
            "$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v"]}},
            "$ref": "#/$defs/node",
        }));
        assert!(accepts(
            &s,
            r#"{"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": []}]}"#
        ));
        assert!(!accepts(&s, r#"{"v": 1, "kids": [{"w": 2}]}"#));
        // Top-level scalars end where they may.
        assert!(accepts(&compile(json!({"type": "integer"})), "42"));
        assert!(!accepts(&compile(json!({"type": "integer"})), "4.2"));
        assert!(accepts(
            &compile(json!({"enum": ["red", "green"]})),
            "\"green\""
        ));
        assert!(accepts(
            &compile(json!({"type": "array", "minItems": 1, "items": {"type": "string"}})),
            "[\"a\"]"
        ));
        assert!(!accepts(
            &compile(json!({"type": "array", "minItems": 1, "items": {"type": "string"}})),
            "[]"
        ));
    }

    /// Schemas that refer to themselves without a value are refused; a
    /// union may refer to itself inside a value.
    #[test]
    fn self_references() {
        for s in [
            json!({"$ref": "#"}),
            json!({"anyOf": [{"$ref": "#"}, {"$ref": "#"}]}),
        ] {
            let e = Schema::compile(&s).unwrap_err();
            assert!(e.message.contains("cycle"), "{s}: {e}");
        }
        let list = compile(
            json!({"anyOf": [{"type": "null"}, {"type": "array", "items": {"$ref": "#"}}]}),
        );
        assert!(accepts(&list, "[[null, []], null]"));
    }

    #[test]
    fn unsupported_keywords_are_named() {
        for (schema, needle) in [
            (json!({"type": "string", "pattern": "^a"}), "pattern"),
            (json!({"type": "integer", "minimum": 3}), "minimum"),
            (
                json!({"type": "object", "properties": {"a": {"type": "date"}}}),
                "date",
            ),
            (json!({"$ref": "http://x"}), "$ref"),
            (
                json!({"type": "object", "properties": {"a": {}}, "required": ["b"]}),
                "'b'",
            ),
            (json!(3), "object"),
        ] {
            let e = Schema::compile(&schema).unwrap_err();
            assert!(e.message.contains(needle), "{schema}: {e}");
        }
    }
}
