//! Where homeostat's OpenStack credentials come from: a `clouds.yaml` entry (with
//! `secure.yaml` merged over it) or the `OS_*` variables, as the OpenStack client tools
//! read them. The result holds secrets in [`Secret`], whose `Debug` never shows them.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::yaml;
use super::Settings;

/// A password, application-credential secret or token: shown as `***` by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A user, project or domain: by id, or by name (within a domain for users/projects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ident {
    /// By id.
    Id(String),
    /// By name, and the domain's id or name (`Default` when none is given).
    Name(String, Domain),
}

/// A domain by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    /// By id.
    Id(String),
    /// By name.
    Name(String),
}

/// How Keystone is asked for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `password`, scoped to a project if one is named.
    Password {
        /// The user.
        user: Ident,
        /// The password.
        password: Secret,
        /// The project the token is for.
        project: Option<Ident>,
    },
    /// `v3applicationcredential`: its id, or its name and its user's.
    ApplicationCredential {
        /// The credential's id, or its name.
        credential: Ident,
        /// The user, needed when the credential is named.
        user: Option<Ident>,
        /// The secret.
        secret: Secret,
    },
}

/// What is needed to reach a cloud's compute API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cloud {
    /// Where the cloud came from (`clouds.yaml: prod`, `OS_* variables`), for messages.
    pub origin: String,
    /// Keystone's v3 URL.
    pub auth_url: String,
    /// How to authenticate.
    pub method: Method,
    /// The region of the compute endpoint, if the cloud has several.
    pub region: Option<String>,
    /// `public`, `internal` or `admin`.
    pub interface: String,
    /// `compute_endpoint_override`: the compute URL to use instead of the catalog's.
    pub compute_override: Option<String>,
}

/// Loads the cloud the settings name: `settings.cloud`, else `OS_CLOUD` from `clouds.yaml`
/// (`settings.clouds_file`, else `OS_CLIENT_CONFIG_FILE`, else the usual paths), else
/// the `OS_*` variables. `env` reads a variable (the process environment, or a test's).
pub fn load(settings: &Settings, env: &dyn Fn(&str) -> Option<String>) -> Result<Cloud, String> {
    let name = settings.cloud.clone().or_else(|| env("OS_CLOUD"));
    let mut cloud = match name {
        Some(name) => from_files(settings, &name, env)?,
        None if env("OS_AUTH_URL").is_some() => from_env(env)?,
        None => {
            return Err(
                "no cloud: set [openstack] cloud (a clouds.yaml entry), OS_CLOUD, or the OS_* \
                 variables (OS_AUTH_URL, ...)"
                    .into(),
            )
        }
    };
    if let Some(region) = &settings.region {
        cloud.region = Some(region.clone());
    }
    // `public` is also the setting's default: only another value overrides the cloud's.
    if settings.interface != "public" {
        cloud.interface = settings.interface.clone();
    }
    match cloud.interface.as_str() {
        "public" | "internal" | "admin" => Ok(cloud),
        other => Err(format!(
            "{}: interface {other:?}: expected public, internal or admin",
            cloud.origin
        )),
    }
}

/// The `clouds.yaml` to read: the configured file, `OS_CLIENT_CONFIG_FILE`, or the first
/// of `./clouds.yaml`, `~/.config/openstack/clouds.yaml`, `/etc/openstack/clouds.yaml`.
fn clouds_file(
    settings: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, String> {
    if let Some(f) = &settings.clouds_file {
        return Ok(f.clone());
    }
    if let Some(f) = env("OS_CLIENT_CONFIG_FILE") {
        return Ok(PathBuf::from(f));
    }
    search_path("clouds.yaml", env)
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "no clouds.yaml in ., ~/.config/openstack or /etc/openstack (set [openstack] clouds_file)"
                .to_string()
        })
}

fn search_path(file: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from(file)];
    if let Some(home) = env("HOME") {
        paths.push(Path::new(&home).join(".config/openstack").join(file));
    }
    paths.push(Path::new("/etc/openstack").join(file));
    paths
}

fn read_yaml(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    yaml::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn from_files(
    settings: &Settings,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Cloud, String> {
    let path = clouds_file(settings, env)?;
    let clouds = read_yaml(&path)?;
    let mut entry = clouds
        .get("clouds")
        .and_then(|c| c.get(name))
        .cloned()
        .ok_or_else(|| format!("{}: no cloud named {name:?}", path.display()))?;
    // secure.yaml beside the clouds.yaml read, else on the search path.
    let secure = match path.parent().map(|d| d.join("secure.yaml")) {
        Some(p) if p.is_file() => Some(p),
        _ if settings.clouds_file.is_some() => None,
        _ => search_path("secure.yaml", env)
            .into_iter()
            .find(|p| p.is_file()),
    };
    if let Some(secure) = secure {
        if let Some(over) = read_yaml(&secure)?.get("clouds").and_then(|c| c.get(name)) {
            merge(&mut entry, over);
        }
    }
    let origin = format!("{}: cloud {name:?}", path.display());
    let Value::Object(entry) = entry else {
        return Err(format!("{origin}: not a mapping"));
    };
    let auth = match entry.get("auth") {
        Some(Value::Object(a)) => a.clone(),
        _ => return Err(format!("{origin}: no auth section")),
    };
    let text = |m: &Map<String, Value>, k: &str| match m.get(k) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let fields = Fields {
        get: &|k| text(&auth, k),
    };
    let auth_type = text(&entry, "auth_type");
    let mut c = cloud(
        origin,
        auth_type,
        fields,
        text(&entry, "region_name"),
        text(&entry, "interface"),
    )?;
    c.compute_override = text(&entry, "compute_endpoint_override");
    Ok(c)
}

fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Cloud, String> {
    let get = |k: &str| env(&format!("OS_{}", k.to_uppercase())).filter(|v| !v.is_empty());
    cloud(
        "OS_* variables".into(),
        env("OS_AUTH_TYPE"),
        Fields { get: &get },
        env("OS_REGION_NAME"),
        env("OS_INTERFACE"),
    )
}

/// Reads the `auth` keys of either source by their clouds.yaml name.
struct Fields<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Fields<'_> {
    fn domain(&self, prefix: &str) -> Domain {
        (self.get)(&format!("{prefix}_domain_id"))
            .map(Domain::Id)
            .or_else(|| (self.get)(&format!("{prefix}_domain_name")).map(Domain::Name))
            .or_else(|| (self.get)("domain_id").map(Domain::Id))
            .or_else(|| (self.get)("domain_name").map(Domain::Name))
            .unwrap_or_else(|| Domain::Name("Default".into()))
    }

    fn ident(&self, prefix: &str, name_key: &str) -> Option<Ident> {
        (self.get)(&format!("{prefix}_id"))
            .map(Ident::Id)
            .or_else(|| (self.get)(name_key).map(|n| Ident::Name(n, self.domain(prefix))))
    }
}

fn cloud(
    origin: String,
    auth_type: Option<String>,
    f: Fields,
    region: Option<String>,
    interface: Option<String>,
) -> Result<Cloud, String> {
    let need = |k: &str| (f.get)(k).ok_or_else(|| format!("{origin}: auth.{k} is missing"));
    let mut auth_url = need("auth_url")?;
    // Keystone v3 only; a bare URL (as many clouds.yaml files have) means its v3.
    while auth_url.ends_with('/') {
        auth_url.pop();
    }
    if !auth_url.ends_with("/v3") {
        auth_url.push_str("/v3");
    }
    let auth_type = auth_type.unwrap_or_else(|| {
        if (f.get)("application_credential_secret").is_some() {
            "v3applicationcredential".into()
        } else {
            "password".into()
        }
    });
    let method = match auth_type.as_str() {
        "password" | "v3password" => Method::Password {
            user: f
                .ident("user", "username")
                .ok_or_else(|| format!("{origin}: auth.username or auth.user_id is missing"))?,
            password: Secret(need("password")?),
            project: f
                .ident("project", "project_name")
                .or_else(|| f.ident("tenant", "tenant_name")),
        },
        "v3applicationcredential" => Method::ApplicationCredential {
            credential: (f.get)("application_credential_id")
                .map(Ident::Id)
                .or_else(|| {
                    (f.get)("application_credential_name")
                        .map(|n| Ident::Name(n, Domain::Name("Default".into())))
                })
                .ok_or_else(|| {
                    format!(
                        "{origin}: auth.application_credential_id or \
                         auth.application_credential_name is missing"
                    )
                })?,
            user: f.ident("user", "username"),
            secret: Secret(need("application_credential_secret")?),
        },
        other => {
            return Err(format!(
                "{origin}: auth_type {other:?} is not supported (password, \
                 v3applicationcredential)"
            ))
        }
    };
    if let Method::ApplicationCredential {
        credential: Ident::Name(..),
        user: None,
        ..
    } = &method
    {
        return Err(format!(
            "{origin}: an application credential given by name needs auth.user_id or \
             auth.username"
        ));
    }
    Ok(Cloud {
        origin,
        auth_url,
        method,
        region,
        interface: interface.unwrap_or_else(|| "public".into()),
        compute_override: None,
    })
}

/// `over`'s keys replace or deepen `base`'s (as `secure.yaml` over `clouds.yaml`).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    fn write(dir: &Path, clouds: &str, secure: &str) -> Settings {
        std::fs::write(dir.join("clouds.yaml"), clouds).unwrap();
        std::fs::write(dir.join("secure.yaml"), secure).unwrap();
        Settings {
            cloud: Some("prod".into()),
            clouds_file: Some(dir.join("clouds.yaml")),
            ..Settings::default()
        }
    }

    #[test]
    fn an_application_credential_with_its_secret_from_secure_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let settings = write(
            dir.path(),
            "clouds:\n  prod:\n    auth_type: v3applicationcredential\n    auth:\n      \
             auth_url: https://ks.example.com:5000\n      application_credential_id: ac1\n    \
             region_name: RegionOne\n    interface: internal\n",
            "clouds:\n  prod:\n    auth:\n      application_credential_secret: s3cr3t\n",
        );
        let c = load(&settings, &env(&[])).unwrap();
        assert_eq!(c.auth_url, "https://ks.example.com:5000/v3");
        assert_eq!(c.region.as_deref(), Some("RegionOne"));
        assert_eq!(c.interface, "internal");
        assert_eq!(
            c.method,
            Method::ApplicationCredential {
                credential: Ident::Id("ac1".into()),
                user: None,
                secret: Secret("s3cr3t".into())
            }
        );
        assert!(
            !format!("{c:?}").contains("s3cr3t"),
            "Debug shows the secret"
        );
    }

    #[test]
    fn a_password_cloud_from_os_cloud_with_the_settings_region_winning() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = write(
            dir.path(),
            "clouds:\n  prod:\n    auth:\n      auth_url: http://ks/v3/\n      username: u\n      \
             project_name: p\n      user_domain_name: Users\n    region_name: A\n",
            "clouds:\n  prod:\n    auth:\n      password: pw\n",
        );
        settings.cloud = None;
        settings.region = Some("B".into());
        let c = load(&settings, &env(&[("OS_CLOUD", "prod")])).unwrap();
        assert_eq!(c.auth_url, "http://ks/v3");
        assert_eq!(c.region.as_deref(), Some("B"));
        assert_eq!(
            c.method,
            Method::Password {
                user: Ident::Name("u".into(), Domain::Name("Users".into())),
                password: Secret("pw".into()),
                project: Some(Ident::Name("p".into(), Domain::Name("Default".into()))),
            }
        );
    }

    #[test]
    fn os_variables_when_no_cloud_is_named() {
        let c = load(
            &Settings::default(),
            &env(&[
                ("OS_AUTH_URL", "http://ks:5000/v3"),
                ("OS_AUTH_TYPE", "v3applicationcredential"),
                ("OS_APPLICATION_CREDENTIAL_ID", "id1"),
                ("OS_APPLICATION_CREDENTIAL_SECRET", "sec"),
                ("OS_INTERFACE", "admin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.origin, "OS_* variables");
        assert_eq!(c.interface, "admin");
        assert!(matches!(c.method, Method::ApplicationCredential { .. }));
    }

    #[test]
    fn what_is_missing_is_named_and_no_secret_is_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let settings = write(
            dir.path(),
            "clouds:\n  prod:\n    auth:\n      auth_url: http://ks\n      password: hunter2\n",
            "",
        );
        let e = load(&settings, &env(&[])).unwrap_err();
        assert!(
            e.contains("auth.username or auth.user_id is missing"),
            "{e}"
        );
        assert!(!e.contains("hunter2"));
        let e = load(&Settings::default(), &env(&[])).unwrap_err();
        assert!(e.starts_with("no cloud"), "{e}");
        let mut other = settings.clone();
        other.cloud = Some("nope".into());
        assert!(load(&other, &env(&[]))
            .unwrap_err()
            .contains("no cloud named \"nope\""));
    }
}
