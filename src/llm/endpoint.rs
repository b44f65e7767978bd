//! The two OpenAI-compatible endpoints the client calls, and what counts as a valid answer from
//! each. A body that is JSON but not a valid answer is retried by the client like a torn one.

use serde_json::Value;

/// Which API a request goes to, and what a valid answer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/chat/completions`: `choices[0].message.content`, a string.
    Chat,
    /// `/embeddings` for `n` inputs: `data[k].embedding` for each, as JSON text. The rows are put
    /// in input order by their `index` fields (positions when no row has one), which must then
    /// be `0..n` exactly; every vector must have the same non-zero length.
    Embeddings(usize),
}

impl Endpoint {
    /// The path after the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Embeddings(_) => "embeddings",
        }
    }

    /// The answer text, or None when the body is not a valid answer.
    pub fn extract(self, v: &Value) -> Option<String> {
        match self {
            Endpoint::Chat => v
                .pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .map(str::to_string),
            Endpoint::Embeddings(n) => {
                let data = v.get("data")?.as_array()?;
                if data.len() != n {
                    return None;
                }
                let indexed = data.iter().any(|d| d.get("index").is_some());
                let mut rows: Vec<Option<Vec<f32>>> = vec![None; n];
                for (k, d) in data.iter().enumerate() {
                    let at = if indexed {
                        usize::try_from(d.get("index")?.as_u64()?).ok()?
                    } else {
                        k
                    };
                    let e: Vec<f32> = serde_json::from_value(d.get("embedding")?.clone()).ok()?;
                    // Out of range or given twice: no way to tell which text a vector belongs to.
                    let slot = rows.get_mut(at)?;
                    if slot.is_some() || e.iter().any(|x| !x.is_finite()) {
                        return None;
                    }
                    *slot = Some(e);
                }
                let rows: Vec<Vec<f32>> = rows.into_iter().collect::<Option<_>>()?;
                let dim = rows.first().map(Vec::len)?;
                if dim == 0 || rows.iter().any(|r| r.len() != dim) {
                    return None;
                }
                serde_json::to_string(&rows).ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn chat_answers_are_the_first_choice_text() {
        let ok = json!({"choices": [{"message": {"role": "assistant", "content": "hi"}},
                                    {"message": {"content": "other"}}]});
        assert_eq!(Endpoint::Chat.extract(&ok).as_deref(), Some("hi"));
        for bad in [
            json!({}),
            json!({"choices": []}),
            json!({"choices": [{"message": {"content": null}}]}),
            json!({"choices": [{"message": {"content": 3}}]}),
            json!({"choices": [{"text": "completion API"}]}),
            json!([1, 2]),
        ] {
            assert_eq!(Endpoint::Chat.extract(&bad), None, "{bad}");
        }
        assert_eq!(Endpoint::Chat.path(), "chat/completions");
    }

    #[test]
    fn embeddings_come_back_in_input_order_or_not_at_all() {
        let e = Endpoint::Embeddings(3);
        assert_eq!(e.path(), "embeddings");
        let shuffled = json!({"data": [
            {"index": 2, "embedding": [2.0, 2.5]},
            {"index": 0, "embedding": [0.0, 0.5]},
            {"index": 1, "embedding": [1.0, 1.5]},
        ]});
        assert_eq!(
            e.extract(&shuffled).as_deref(),
            Some("[[0.0,0.5],[1.0,1.5],[2.0,2.5]]")
        );
        let unindexed =
            json!({"data": [{"embedding": [1.0]}, {"embedding": [2.0]}, {"embedding": [3.0]}]});
        assert_eq!(
            e.extract(&unindexed).as_deref(),
            Some("[[1.0],[2.0],[3.0]]")
        );
        let row = |i: Value, v: Value| json!({"index": i, "embedding": v});
        for (why, bad) in [
            (
                "one too few",
                json!({"data": [row(json!(0), json!([1.0])), row(json!(1), json!([1.0]))]}),
            ),
            (
                "an index twice",
                json!({"data": [row(json!(0), json!([1.0])), row(json!(0), json!([1.0])), row(json!(1), json!([1.0]))]}),
            ),
            (
                "an index out of range",
                json!({"data": [row(json!(0), json!([1.0])), row(json!(1), json!([1.0])), row(json!(3), json!([1.0]))]}),
            ),
            (
                "a negative index",
                json!({"data": [row(json!(-1), json!([1.0])), row(json!(1), json!([1.0])), row(json!(2), json!([1.0]))]}),
            ),
            (
                "some rows unindexed",
                json!({"data": [row(json!(0), json!([1.0])), {"embedding": [1.0]}, row(json!(2), json!([1.0]))]}),
            ),
            (
                "ragged",
                json!({"data": [row(json!(0), json!([1.0])), row(json!(1), json!([1.0, 2.0])), row(json!(2), json!([1.0]))]}),
            ),
            (
                "empty vectors",
                json!({"data": [row(json!(0), json!([])), row(json!(1), json!([])), row(json!(2), json!([]))]}),
            ),
            (
                "not numbers",
                json!({"data": [row(json!(0), json!(["a"])), row(json!(1), json!([1.0])), row(json!(2), json!([1.0]))]}),
            ),
            ("no data", json!({"object": "list"})),
        ] {
            assert_eq!(e.extract(&bad), None, "{why}");
        }
        assert_eq!(Endpoint::Embeddings(0).extract(&json!({"data": []})), None);
    }
}
