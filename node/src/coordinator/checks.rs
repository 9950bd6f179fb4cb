//! How often independent builders agreed, per recipe name (`kiln recipe
//! check`): counted from the `Results` table when the coordinator starts,
//! then once per settlement of a job open here, as every member of the
//! coordination set records them.
//!
//! Bounded: at most [`RECIPES_TRACKED_MAX`] recipe names; past that a new
//! name is not counted.

use std::collections::HashMap;

use kiln_protocol::coord::RecipeChecks;
use kiln_protocol::messages::Settlement;
use kiln_protocol::wire;
use kiln_store::{RecordTable, Store};

/// Recipe names whose checks a coordinator counts.
pub const RECIPES_TRACKED_MAX: usize = 10_000;

#[derive(Default)]
pub(super) struct Checks {
    by_recipe: HashMap<String, RecipeChecks>,
}

impl Checks {
    /// Counts every settlement in the store's results.
    pub(super) fn load(store: &Store) -> Checks {
        let mut checks = Checks::default();
        for (_, bytes) in store.records(RecordTable::Results).unwrap_or_default() {
            if let Ok(record) =
                wire::decode::<super::results::ResultRecord, { kiln_store::RECORD_VALUE_BYTES_MAX }>(&bytes)
            {
                checks.settled(&record.recipe_name, &record.settlement);
            }
        }
        checks
    }

    /// Counts one settlement of a build of `recipe_name`.
    pub(super) fn settled(&mut self, recipe_name: &str, settlement: &Settlement) {
        if recipe_name.is_empty() {
            return;
        }
        if !self.by_recipe.contains_key(recipe_name) && self.by_recipe.len() >= RECIPES_TRACKED_MAX {
            return;
        }
        let entry = self
            .by_recipe
            .entry(recipe_name.to_string())
            .or_insert_with(|| RecipeChecks {
                recipe_name: recipe_name.to_string(),
                ..Default::default()
            });
        let count = match settlement {
            Settlement::Checked { check, .. } if check.disagreed.is_empty() => &mut entry.agreed,
            Settlement::Checked { .. } => &mut entry.agreed_after_disagreement,
            Settlement::NotReproducible { .. } => &mut entry.not_reproducible,
            Settlement::Done { .. } | Settlement::Trusted { .. } => &mut entry.unchecked,
            Settlement::Failed { .. } => return,
        };
        *count = count.saturating_add(1);
    }

    /// The counts for one recipe name (all zero if none was settled).
    pub(super) fn of(&self, recipe_name: &str) -> RecipeChecks {
        self.by_recipe
            .get(recipe_name)
            .cloned()
            .unwrap_or_else(|| RecipeChecks {
                recipe_name: recipe_name.to_string(),
                ..Default::default()
            })
    }
}
