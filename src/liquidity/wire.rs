//! LSPS0 (bLIP-50) framing: a JSON-RPC 2.0 object as the whole payload of
//! Lightning message 37913. Reading never fails: what cannot be read
//! becomes the JSON-RPC error to answer with.

use lightning::io;
use lightning::ln::wire;
use lightning::util::ser::{Writeable, Writer};
use serde_json::{json, Map, Value};

/// The Lightning message type LSPS0 messages travel in.
pub const LSPS_MESSAGE_TYPE: u16 = 37913;

/// The largest request payload a node reads; longer ones are refused.
pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024;

/// The longest JSON-RPC `id` accepted.
pub const MAX_ID_CHARS: usize = 64;

/// The deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 32;

/// JSON-RPC: the payload is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: no such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC: invalid parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC: the node failed internally.
pub const INTERNAL_ERROR: i64 = -32603;

/// One LSPS0 message as it travels: the JSON text, as bytes (a peer may
/// send anything, UTF-8 or not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawMessage {
    /// The payload.
    pub payload: Vec<u8>,
}

impl RawMessage {
    /// A message carrying `value`.
    pub fn from_json(value: &Value) -> Self {
        RawMessage {
            payload: value.to_string().into_bytes(),
        }
    }
}

impl wire::Type for RawMessage {
    fn type_id(&self) -> u16 {
        LSPS_MESSAGE_TYPE
    }
}

impl Writeable for RawMessage {
    fn write<W: Writer>(&self, writer: &mut W) -> Result<(), io::Error> {
        writer.write_all(&self.payload)
    }
}

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    /// The error code.
    pub code: i64,
    /// What went wrong, for a human.
    pub message: String,
    /// Details a program can use.
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with `code` and `message`.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The same error with `data`.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    fn to_json(&self) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        error
    }

    fn from_json(value: &Value) -> Option<Self> {
        Some(RpcError {
            code: value.get("code")?.as_i64()?,
            message: value.get("message")?.as_str()?.to_string(),
            data: value.get("data").cloned(),
        })
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

/// What an incoming message is.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    /// A request to answer.
    Request {
        /// Its id, echoed in the answer.
        id: String,
        /// The method.
        method: String,
        /// Its parameters (an object; `{}` when absent).
        params: Map<String, Value>,
    },
    /// An answer to one of our requests.
    Response {
        /// The id of the request it answers.
        id: String,
        /// Its result, or the error.
        outcome: Result<Value, RpcError>,
    },
    /// Something that cannot be read: answer `error` to `id` (`None` when
    /// the id could not be read either).
    Invalid {
        /// The id, if it could be read.
        id: Option<String>,
        /// The error to answer with.
        error: RpcError,
    },
}

/// Reads one message. Never panics, whatever `payload` holds.
pub fn parse(payload: &[u8]) -> Incoming {
    let invalid = |id: Option<String>, code: i64, message: &str| Incoming::Invalid {
        id,
        error: RpcError::new(code, message),
    };
    if payload.len() > MAX_PAYLOAD_BYTES {
        return invalid(None, INVALID_REQUEST, "request too large");
    }
    match nesting_depth(payload) {
        Some(depth) if depth > MAX_DEPTH => {
            return invalid(None, INVALID_REQUEST, "request nested too deeply")
        }
        Some(_) => {}
        None => return invalid(None, PARSE_ERROR, "parse error"),
    }
    let value: Value = match serde_json::from_slice(payload) {
        Ok(value) => value,
        Err(_) => return invalid(None, PARSE_ERROR, "parse error"),
    };
    let Value::Object(mut object) = value else {
        return invalid(None, INVALID_REQUEST, "not a JSON-RPC object");
    };
    let id = match object.get("id") {
        Some(Value::String(id)) if id.chars().count() <= MAX_ID_CHARS => Some(id.clone()),
        Some(Value::String(_)) => return invalid(None, INVALID_REQUEST, "id too long"),
        Some(Value::Null) | None => None,
        Some(_) => return invalid(None, INVALID_REQUEST, "id must be a string"),
    };
    if object.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return invalid(id, INVALID_REQUEST, "jsonrpc must be \"2.0\"");
    }
    if let Some(method) = object.get("method") {
        let Some(method) = method.as_str().map(str::to_string) else {
            return invalid(id, INVALID_REQUEST, "method must be a string");
        };
        let Some(id) = id else {
            // A notification: this protocol has none, and there is no id
            // to answer to.
            return invalid(None, INVALID_REQUEST, "requests need an id");
        };
        let params = match object.remove("params") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(params)) => params,
            Some(_) => {
                return Incoming::Invalid {
                    id: Some(id),
                    error: RpcError::new(INVALID_PARAMS, "params must be an object"),
                }
            }
        };
        return Incoming::Request { id, method, params };
    }
    let Some(id) = id else {
        return invalid(None, INVALID_REQUEST, "not a request, and no id to answer");
    };
    let outcome = match (object.remove("result"), object.get("error")) {
        (Some(result), None) => Ok(result),
        (None, Some(error)) => match RpcError::from_json(error) {
            Some(error) => Err(error),
            None => return invalid(Some(id), INVALID_REQUEST, "malformed error object"),
        },
        _ => {
            return invalid(
                Some(id),
                INVALID_REQUEST,
                "neither a request nor a response",
            )
        }
    };
    Incoming::Response { id, outcome }
}

/// The deepest nesting of arrays and objects in `payload` (ignoring
/// brackets inside strings); `None` when brackets do not balance.
fn nesting_depth(payload: &[u8]) -> Option<usize> {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in payload {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.checked_sub(1)?,
            _ => {}
        }
    }
    Some(deepest)
}

/// A request message.
pub fn request(id: &str, method: &str, params: Value) -> RawMessage {
    RawMessage::from_json(&json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": method,
        "params": params,
    }))
}

/// The answer to request `id` (`None`: the request's id could not be read).
pub fn response(id: Option<&str>, outcome: Result<Value, RpcError>) -> RawMessage {
    let mut answer = json!({ "jsonrpc": "2.0", "id": id });
    match outcome {
        Ok(result) => answer["result"] = result,
        Err(error) => answer["error"] = error.to_json(),
    }
    RawMessage::from_json(&answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_code(payload: &[u8]) -> i64 {
        match parse(payload) {
            Incoming::Invalid { error, .. } => error.code,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_and_responses_are_read() {
        let raw = request("7", "ldksplice.get_info", json!({}));
        assert_eq!(
            parse(&raw.payload),
            Incoming::Request {
                id: "7".into(),
                method: "ldksplice.get_info".into(),
                params: Map::new()
            }
        );
        let answer = response(Some("7"), Ok(json!({"version": 1})));
        assert_eq!(
            parse(&answer.payload),
            Incoming::Response {
                id: "7".into(),
                outcome: Ok(json!({"version": 1}))
            }
        );
        let refusal = response(Some("8"), Err(RpcError::new(4, "too many open orders")));
        assert!(matches!(
            parse(&refusal.payload),
            Incoming::Response {
                outcome: Err(RpcError { code: 4, .. }),
                ..
            }
        ));
    }

    #[test]
    fn what_cannot_be_read_gets_its_error_code() {
        assert_eq!(
            error_code(b"{\"jsonrpc\": \"2.0\", \"id\": \"1\""),
            PARSE_ERROR
        );
        assert_eq!(error_code(&[0xff, 0xfe, b'{']), PARSE_ERROR);
        assert_eq!(error_code(b"[1, 2]"), INVALID_REQUEST);
        assert_eq!(
            error_code(b"{\"id\": \"1\", \"method\": \"x\"}"),
            INVALID_REQUEST
        );
        assert_eq!(
            error_code(b"{\"jsonrpc\": \"2.0\", \"id\": 5, \"method\": \"x\"}"),
            INVALID_REQUEST
        );
        assert_eq!(
            error_code(
                b"{\"jsonrpc\": \"2.0\", \"id\": \"1\", \"method\": \"x\", \"params\": [1]}"
            ),
            INVALID_PARAMS
        );
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(error_code(deep.as_bytes()), INVALID_REQUEST);
        let huge = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(error_code(&huge), INVALID_REQUEST);
        let long_id = format!(
            "{{\"jsonrpc\": \"2.0\", \"id\": \"{}\", \"method\": \"x\"}}",
            "a".repeat(MAX_ID_CHARS + 1)
        );
        assert_eq!(error_code(long_id.as_bytes()), INVALID_REQUEST);
        // Brackets inside strings do not count as nesting.
        let quoted = format!(
            "{{\"jsonrpc\": \"2.0\", \"id\": \"1\", \"method\": \"{}\"}}",
            "[".repeat(100)
        );
        assert!(matches!(parse(quoted.as_bytes()), Incoming::Request { .. }));
    }
}
