//! Azure's limits and naming rules as the emulator enforces them, written here rather than
//! taken from the product (`plan::MAX_ROUTES_PER_TABLE`, `ids::check_route_name`), so that a
//! product rule that drifts from Azure's is caught by the emulator instead of agreed with.

/// Routes in one route table ("Azure subscription and service limits": 400 without Azure
/// Virtual Network Manager).
pub const MAX_ROUTES: usize = 400;

/// The naming rule of `Microsoft.Network/routeTables` and `routeTables/routes` ("Naming rules
/// and restrictions for Azure resources"): 1-80 characters, alphanumerics, underscores, periods
/// and hyphens; starts with an alphanumeric, ends with an alphanumeric or an underscore.
pub fn name_problem(name: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let length = name.chars().count();
    if !(1..=80).contains(&length) {
        Some(format!(
            "the name must be 1-80 characters long, not {length}"
        ))
    } else if let Some(c) = name.chars().find(|&c| !allowed(c)) {
        Some(format!(
            "{c:?} is not allowed (alphanumerics, '_', '.' and '-' are)"
        ))
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("the name must start with a letter or a digit".into())
    } else if !name.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        Some("the name must end with a letter, a digit or '_'".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_azures_rule() {
        for ok in ["kms-20-118-99-224", "a", "A_", "x.y-z_", &"a".repeat(80)] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for bad in ["", "-a", "a-", "a.", "a b", "a/b", "é", &"a".repeat(81)] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }
}
