//! `GET /postman.json` (SPEC §11): a Postman Collection v2.1 generated from the OpenAPI
//! document, so the collection can never list a route the API lacks or miss one it has.
//!
//! One folder per OpenAPI tag (in the document's tag order), one request per operation,
//! named by its summary. URLs are `{{baseUrl}}` plus the server prefix and the path, with
//! each path parameter a collection variable (`:room_id` = `{{room_id}}`, so a user sets a
//! room once for every request); query parameters are listed, optional ones disabled.
//! Bodies are the schema's example. The collection authenticates with bearer
//! `{{token}}`; operations the document marks as unauthenticated (register, login) say
//! `noauth`.

use serde_json::{Map, Value, json};

/// Where Postman's own schema for v2.1 collections lives; a collection names it in
/// `info.schema`.
const SCHEMA: &str = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json";

/// The collection for `spec`, an OpenAPI 3 document as poem-openapi renders it.
pub fn collection(spec: &Value) -> Value {
    let prefix = spec["servers"][0]["url"]
        .as_str()
        .unwrap_or("")
        .trim_end_matches('/');
    let mut folders: Vec<(String, String, Vec<Value>)> = spec["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|tag| {
            let name = tag["name"].as_str().unwrap_or_default().to_owned();
            let description = tag["description"].as_str().unwrap_or_default().to_owned();
            (name, description, Vec::new())
        })
        .collect();
    let mut path_variables = Vec::<String>::new();
    for (path, operations) in spec["paths"].as_object().into_iter().flatten() {
        for (method, operation) in operations.as_object().into_iter().flatten() {
            let tag = operation["tags"][0].as_str().unwrap_or("Other");
            let folder = match folders.iter().position(|(name, ..)| name == tag) {
                Some(index) => index,
                None => {
                    folders.push((tag.to_owned(), String::new(), Vec::new()));
                    folders.len() - 1
                }
            };
            let item = request_item(spec, prefix, path, method, operation, &mut path_variables);
            folders[folder].2.push(item);
        }
    }
    let mut variables = vec![
        json!({"key": "baseUrl", "value": "http://localhost:8080", "type": "string"}),
        json!({"key": "token", "value": "", "type": "string",
               "description": "A token from Auth › login (or a bot key)."}),
    ];
    variables.extend(
        path_variables
            .into_iter()
            .map(|name| json!({"key": name, "value": "", "type": "string"})),
    );
    json!({
        "info": {
            "name": spec["info"]["title"],
            "version": spec["info"]["version"],
            "description": spec["info"]["description"],
            "schema": SCHEMA,
        },
        "auth": bearer(),
        "variable": variables,
        "item": folders
            .into_iter()
            .filter(|(_, _, items)| !items.is_empty())
            .map(|(name, description, items)| {
                json!({"name": name, "description": description, "item": items})
            })
            .collect::<Vec<_>>(),
    })
}

fn bearer() -> Value {
    json!({"type": "bearer", "bearer": [{"key": "token", "value": "{{token}}", "type": "string"}]})
}

/// One operation as a Postman request, adding its path parameters to `path_variables`.
fn request_item(
    spec: &Value,
    prefix: &str,
    path: &str,
    method: &str,
    operation: &Value,
    path_variables: &mut Vec<String>,
) -> Value {
    let parameters = operation["parameters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let segments: Vec<String> = format!("{prefix}{path}")
        .split('/')
        .filter(|segment| !segment.is_empty())
        .map(
            |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => {
                    if !path_variables.iter().any(|known| known == name) {
                        path_variables.push(name.to_owned());
                    }
                    format!(":{name}")
                }
                None => segment.to_owned(),
            },
        )
        .collect();
    let described = |parameter: &Value| parameter["description"].as_str().map(str::to_owned);
    let variable: Vec<Value> = parameters
        .iter()
        .filter(|p| p["in"] == "path")
        .map(|p| {
            let name = p["name"].as_str().unwrap_or_default();
            let mut variable = json!({"key": name, "value": format!("{{{{{name}}}}}")});
            if let Some(description) = described(p) {
                variable["description"] = description.into();
            }
            variable
        })
        .collect();
    let query: Vec<Value> = parameters
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| {
            let value = match &p["schema"]["default"] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let mut entry = json!({
                "key": p["name"],
                "value": value,
                "disabled": p["required"] != true,
            });
            if let Some(description) = described(p) {
                entry["description"] = description.into();
            }
            entry
        })
        .collect();
    let raw_query: Vec<String> = query
        .iter()
        .filter(|q| q["disabled"] == false)
        .map(|q| {
            format!(
                "{}={}",
                q["key"].as_str().unwrap_or(""),
                q["value"].as_str().unwrap_or("")
            )
        })
        .collect();
    let mut raw = format!("{{{{baseUrl}}}}/{}", segments.join("/"));
    if !raw_query.is_empty() {
        raw = format!("{raw}?{}", raw_query.join("&"));
    }
    let mut url = json!({"raw": raw, "host": ["{{baseUrl}}"], "path": segments});
    if !query.is_empty() {
        url["query"] = query.into();
    }
    if !variable.is_empty() {
        url["variable"] = variable.into();
    }

    let mut request = Map::new();
    request.insert("method".into(), method.to_uppercase().into());
    request.insert("url".into(), url);
    let mut headers = vec![json!({"key": "Accept", "value": "application/json"})];
    if let Some(body) = example_body(spec, operation) {
        headers.push(json!({"key": "Content-Type", "value": "application/json"}));
        let raw = serde_json::to_string_pretty(&body).unwrap_or_default();
        request.insert(
            "body".into(),
            json!({"mode": "raw", "raw": raw, "options": {"raw": {"language": "json"}}}),
        );
    }
    request.insert("header".into(), headers.into());
    let open = operation["security"].as_array().is_none_or(Vec::is_empty);
    if open {
        request.insert("auth".into(), json!({"type": "noauth"}));
    }
    if let Some(description) = operation["description"].as_str() {
        request.insert("description".into(), description.into());
    }
    let name = operation["summary"]
        .as_str()
        .or(operation["operationId"].as_str())
        .map_or_else(
            || format!("{} {path}", method.to_uppercase()),
            str::to_owned,
        );
    json!({"name": name, "request": request})
}

/// The example of the operation's JSON request body, if it has a body: the schema's own
/// example, or an empty object when the schema has none.
fn example_body(spec: &Value, operation: &Value) -> Option<Value> {
    let content = operation["requestBody"]["content"].as_object()?;
    let media = content
        .iter()
        .find(|(kind, _)| kind.starts_with("application/json"))?
        .1;
    let schema = resolve(spec, &media["schema"]);
    Some(match &schema["example"] {
        Value::Null => json!({}),
        example => example.clone(),
    })
}

/// Follows a `$ref` into `components`, once (poem-openapi never chains them).
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/")) {
        Some(pointer) => spec.pointer(&format!("/{pointer}")).unwrap_or(&Value::Null),
        None => schema,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_becomes_a_request_in_its_tags_folder_with_path_variables() {
        let spec: Value = serde_json::from_str(&crate::api::openapi().spec()).unwrap();
        let collection = collection(&spec);
        let mut requests = Vec::new();
        for folder in collection["item"].as_array().unwrap() {
            for item in folder["item"].as_array().unwrap() {
                let request = &item["request"];
                let path = request["url"]["path"].as_array().unwrap();
                let path: Vec<&str> = path.iter().map(|s| s.as_str().unwrap()).collect();
                requests.push(format!(
                    "{} /{}",
                    request["method"].as_str().unwrap(),
                    path.join("/")
                ));
            }
        }
        let mut operations = Vec::new();
        for (path, methods) in spec["paths"].as_object().unwrap() {
            for method in methods.as_object().unwrap().keys() {
                let path = path.replace('{', ":").replace('}', "");
                operations.push(format!("{} {path}", method.to_uppercase()));
            }
        }
        requests.sort();
        operations.sort();
        assert_eq!(requests, operations);
        let send = collection["item"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|folder| folder["item"].as_array().unwrap())
            .find(|item| {
                item["request"]["method"] == "POST"
                    && item["request"]["url"]["raw"] == "{{baseUrl}}/v1/rooms/:room_id/messages"
            })
            .expect("the send request");
        assert_eq!(
            send["request"]["url"]["variable"][0]["value"],
            "{{room_id}}"
        );
        let body: Value =
            serde_json::from_str(send["request"]["body"]["raw"].as_str().unwrap()).unwrap();
        assert_eq!(body["text"], "Lunch at noon?");
        assert!(
            send["request"].get("auth").is_none(),
            "inherits the bearer auth"
        );
    }
}
