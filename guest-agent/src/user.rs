//! Resolution of a container `User` (`name`, `uid`, `name:group`, `uid:gid`) against the
//! container's own `/etc/passwd` and `/etc/group`.

use thiserror::Error;

/// Credentials of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids: the groups of `/etc/group` that list the user by name.
    pub groups: Vec<u32>,
    /// Home directory from the passwd entry, `/` without one.
    pub home: String,
}

/// Failures of resolving a user.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UserError {
    /// A user name has no passwd entry.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// A group name has no group entry.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5],
        })
    })
}

/// Yields `(name, gid, members)` of each valid group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 {
            return None;
        }
        let members = fields[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((fields[0], fields[2].parse().ok()?, members))
    })
}

/// Resolves `spec` against the contents of `/etc/passwd` and `/etc/group`.
///
/// An empty spec means root. A numeric uid without an entry gets gid 0 and home `/`; a numeric
/// gid needs no entry either. Names must have entries.
///
/// # Errors
/// Returns [`UserError`] for a user or group name without an entry.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let (user, group_spec) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };

    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|entry| entry.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|entry| entry.name == user)
                .ok_or_else(|| UserError::UnknownUser(user.to_owned()))?,
        ),
    };
    let uid = entry
        .as_ref()
        .map_or_else(|| user.parse().unwrap_or(0), |entry| entry.uid);
    let mut gid = entry.as_ref().map_or(0, |entry| entry.gid);

    if let Some(group_spec) = group_spec.filter(|g| !g.is_empty()) {
        gid = match group_spec.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(name, _, _)| *name == group_spec)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| UserError::UnknownGroup(group_spec.to_owned()))?,
        };
    }

    let mut groups = Vec::new();
    if let Some(entry) = &entry {
        for (_, group_gid, members) in group_entries(group) {
            if members.contains(&entry.name) && !groups.contains(&group_gid) {
                groups.push(group_gid);
            }
        }
    }

    Ok(Identity {
        uid,
        gid,
        groups,
        home: entry
            .map(|entry| entry.home)
            .filter(|home| !home.is_empty())
            .unwrap_or("/")
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
                          www:x:33:33:www:/var/www:/bin/false\n\
                          broken line\n";
    const GROUP: &str = "root:x:0:\n\
                         daemon:x:1:\n\
                         www:x:33:\n\
                         audio:x:29:www,daemon\n\
                         video:x:44:www\n";

    fn identity(uid: u32, gid: u32, groups: &[u32], home: &str) -> Identity {
        Identity {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.into(),
        }
    }

    #[test]
    fn resolve_accepts_every_form() {
        let cases = [
            ("", identity(0, 0, &[], "/root")),
            ("www", identity(33, 33, &[29, 44], "/var/www")),
            ("33", identity(33, 33, &[29, 44], "/var/www")),
            ("www:video", identity(33, 44, &[29, 44], "/var/www")),
            ("daemon:0", identity(1, 0, &[29], "/usr/sbin")),
            ("1234", identity(1234, 0, &[], "/")),
            ("1234:5678", identity(1234, 5678, &[], "/")),
            ("1234:audio", identity(1234, 29, &[], "/")),
        ];
        for (i, (spec, expected)) in cases.into_iter().enumerate() {
            assert_eq!(
                resolve(spec, PASSWD, GROUP),
                Ok(expected),
                "case {i}: {spec:?}"
            );
        }
    }

    #[test]
    fn resolve_rejects_unknown_names() {
        assert_eq!(
            resolve("nobody", PASSWD, GROUP),
            Err(UserError::UnknownUser("nobody".into()))
        );
        assert_eq!(
            resolve("www:staff", PASSWD, GROUP),
            Err(UserError::UnknownGroup("staff".into()))
        );
    }

    #[test]
    fn resolve_without_files_takes_numeric_ids() {
        assert_eq!(resolve("", "", ""), Ok(identity(0, 0, &[], "/")));
        assert_eq!(resolve("7:8", "", ""), Ok(identity(7, 8, &[], "/")));
    }
}
