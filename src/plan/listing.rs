//! Lines that name a few of a long list of step ids (a lock drift, the datasets a step
//! waits for, the inputs that changed): the rest are counted, `plan --json` lists all.

/// The first `shown` of `ids`, comma-separated, and how many more there are: a line
/// that names a few of a long list (`plan --json` lists them all).
pub fn first_few<'a>(ids: impl IntoIterator<Item = &'a String>, shown: usize) -> String {
    let ids: Vec<&String> = ids.into_iter().collect();
    let mut named = ids
        .iter()
        .take(shown)
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > shown {
        named.push_str(&format!(", and {} more", ids.len() - shown));
    }
    named
}

#[cfg(test)]
mod tests {
    use super::first_few;

    #[test]
    fn first_few_names_a_few_and_counts_the_rest() {
        let ids: Vec<String> = (1..=8).map(|i| format!("expert:e{i}")).collect();
        assert_eq!(first_few(&ids[..2], 3), "expert:e1, expert:e2");
        assert_eq!(first_few(&ids[..3], 3), "expert:e1, expert:e2, expert:e3");
        assert_eq!(first_few(&ids, 3), "expert:e1, expert:e2, expert:e3, and 5 more");
    }
}
