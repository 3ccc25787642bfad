//! Plans of statements whose subqueries name an ML table function's columns.
use super::{ok, residual};

#[test]
fn function_columns_named_unqualified_in_subqueries_are_a_lateral_row() {
    let p = ok("SELECT r.id FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s \
                WHERE EXISTS (SELECT 1 FROM flags f WHERE f.label = sentiment AND confidence > 0.5)");
    let r = residual(&p);
    let lateral = "CROSS JOIN LATERAL (SELECT pgenrich_base0.m0_sentiment AS sentiment, \
                   pgenrich_base0.m0_confidence AS confidence) AS pgenrich_base0_columns";
    assert!(r.contains(lateral), "{r}");
    assert!(
        r.contains("f.label = sentiment AND confidence > 0.5"),
        "{r}"
    );
    // Two functions' columns of the name: both, so that PostgreSQL finds it ambiguous (42702).
    let p = ok(
        "SELECT r.id FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s, \
                aws_comprehend.detect_sentiment(r.title, 'en') t \
                WHERE EXISTS (SELECT 1 FROM flags f WHERE f.label = sentiment)",
    );
    let r = residual(&p);
    let both = "(SELECT pgenrich_base0.m0_sentiment AS sentiment, \
                pgenrich_base0.m1_sentiment AS sentiment)";
    assert!(r.contains(both), "{r}");
}
