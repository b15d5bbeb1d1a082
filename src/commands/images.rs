//! `bulkhead images [-q] [--digests]`.

use std::process::ExitCode;

use super::{human_size, open_images, Global, RegistryArgs};

/// Arguments of `images`.
#[derive(clap::Args)]
pub struct Args {
    /// Print only image ids.
    #[arg(short, long)]
    pub quiet: bool,

    /// Add a DIGEST column.
    #[arg(long)]
    pub digests: bool,

    /// Print full image ids.
    #[arg(long)]
    pub no_trunc: bool,
}

/// One output row: repository, tag and digest of one name of an image.
struct Row {
    repository: String,
    tag: String,
    digest: String,
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let images = open_images(global, &RegistryArgs::default())?;
    let list = images.list()?;
    let id = |record: &::images::store::ImageRecord| {
        if args.no_trunc {
            record.id.to_string()
        } else {
            record.id.short()
        }
    };

    if args.quiet {
        for record in &list {
            println!("{}", id(record));
        }
        return Ok(ExitCode::SUCCESS);
    }

    let mut table = vec![];
    for record in &list {
        for row in rows(record) {
            let mut line = vec![row.repository, row.tag];
            if args.digests {
                line.push(row.digest);
            }
            line.push(id(record));
            line.push(
                record
                    .created
                    .as_deref()
                    .map_or("N/A".to_string(), created_ago),
            );
            line.push(human_size(record.size));
            table.push(line);
        }
    }
    let mut header: Vec<String> = ["REPOSITORY", "TAG"].map(String::from).to_vec();
    if args.digests {
        header.push("DIGEST".into());
    }
    header.extend(["IMAGE ID", "CREATED", "SIZE"].map(String::from));
    print_table(&header, &table);
    Ok(ExitCode::SUCCESS)
}

fn rows(record: &::images::store::ImageRecord) -> Vec<Row> {
    let digest_of = |name: &str| {
        record
            .repo_digests
            .iter()
            .find_map(|d| {
                d.split_once('@')
                    .filter(|(n, _)| *n == name)
                    .map(|(_, digest)| digest.to_string())
            })
            .unwrap_or_else(|| "<none>".into())
    };
    let mut rows: Vec<Row> = record
        .tags
        .iter()
        .filter_map(|tag| tag.parse::<::images::Reference>().ok())
        .map(|r| Row {
            repository: r.familiar_name(),
            tag: r.tag.clone().unwrap_or_default(),
            digest: digest_of(&r.name()),
        })
        .collect();
    if rows.is_empty() {
        rows = record
            .repo_digests
            .iter()
            .filter_map(|d| d.parse::<::images::Reference>().ok())
            .map(|r| Row {
                repository: r.familiar_name(),
                tag: "<none>".into(),
                digest: r.digest.map_or("<none>".into(), |d| d.to_string()),
            })
            .collect();
    }
    if rows.is_empty() {
        rows.push(Row {
            repository: "<none>".into(),
            tag: "<none>".into(),
            digest: "<none>".into(),
        });
    }
    rows
}

fn print_table(header: &[String], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let format_row = |cells: &[String]| {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        line
    };
    println!("{}", format_row(header));
    for row in rows {
        println!("{}", format_row(row));
    }
}

/// Formats an RFC 3339 creation time as Docker's "N units ago".
fn created_ago(created: &str) -> String {
    let Some(seconds) = parse_rfc3339(created) else {
        return created.to_string();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let age = (now - seconds).max(0);
    let (value, unit) = match age {
        a if a < 60 => return "Less than a minute ago".into(),
        a if a < 3600 => (a / 60, "minute"),
        a if a < 86_400 => (a / 3600, "hour"),
        a if a < 86_400 * 14 => (a / 86_400, "day"),
        a if a < 86_400 * 60 => (a / (86_400 * 7), "week"),
        a if a < 86_400 * 730 => (a / (86_400 * 30), "month"),
        a => (a / (86_400 * 365), "year"),
    };
    format!("{value} {unit}{} ago", if value == 1 { "" } else { "s" })
}

/// Parses the date and time of `YYYY-MM-DDTHH:MM:SS…` as UTC seconds since the epoch.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    // Days from civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;

    #[test]
    fn rfc3339_to_epoch() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00.5Z"), Some(1_709_208_000));
        assert_eq!(parse_rfc3339("garbage"), None);
    }
}
