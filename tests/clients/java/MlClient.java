// pgjdbc through pgenrich: prepared statements executed past prepareThreshold (server-side
// statements, binary transfer), a result read in pieces with setFetchSize and autocommit off
// (a portal with row limits), a statement that runs base + residual, a batch of INSERT … SELECT
// with ML calls, commit and rollback, and a model error aborting a transaction.
//
// Run by tests/it/jdbc.rs twice, through pgenrich and on the reference database (where the ML
// functions are native), as `java -cp postgresql.jar MlClient.java <libpq-style conninfo>`;
// prints one line per value, which the test compares. Exits non-zero on any unexpected error.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.HashMap;
import java.util.Map;

public class MlClient {
    static final StringBuilder OUT = new StringBuilder();

    static void line(String what, Object... values) {
        OUT.append(what);
        for (Object v : values) {
            OUT.append('|').append(v);
        }
        OUT.append('\n');
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> p = new HashMap<>();
        for (String part : args[0].split(" ")) {
            String[] kv = part.split("=", 2);
            p.put(kv[0], kv[1]);
        }
        String url = "jdbc:postgresql://" + p.get("host") + ":" + p.get("port") + "/"
                + p.get("dbname") + "?sslmode=disable&prepareThreshold=2";
        try (Connection c = DriverManager.getConnection(url, p.get("user"), p.get("password"))) {
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT (aws_comprehend.detect_sentiment(?, 'en')).sentiment, "
                    + "(aws_comprehend.detect_sentiment(?, 'en')).confidence, "
                    + "aws_sagemaker.invoke_endpoint('score', NULL, ?::int)")) {
                for (int i = 1; i <= 5; i++) {
                    String text = i % 2 == 0 ? "good" : "bad";
                    ps.setString(1, text);
                    ps.setString(2, text);
                    ps.setInt(3, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            line("prepared", rs.getString(1), rs.getFloat(2), rs.getString(3));
                        }
                    }
                }
            }
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT id, aws_comprehend.detect_sentiment(body, 'en') AS s "
                    + "FROM drv_j ORDER BY id")) {
                ps.setFetchSize(4);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        line("fetched", rs.getInt(1), rs.getString(2));
                    }
                }
            }
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT id, aws_sagemaker.invoke_endpoint('score', NULL, id)::int AS score "
                    + "FROM drv_j WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = ? "
                    + "ORDER BY score DESC, id")) {
                ps.setString(1, "NEGATIVE");
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        line("residual", rs.getInt(1), rs.getInt(2));
                    }
                }
            }
            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE IF EXISTS drv_j_out");
                s.execute("CREATE TABLE drv_j_out (id int, label text)");
            }
            try (PreparedStatement ps = c.prepareStatement(
                    "INSERT INTO drv_j_out SELECT ?, "
                    + "(aws_comprehend.detect_sentiment(?, 'en')).sentiment")) {
                String[] texts = {"good", "bad", null, "fine"};
                for (int i = 0; i < texts.length; i++) {
                    ps.setInt(1, i + 1);
                    ps.setString(2, texts[i]);
                    ps.addBatch();
                }
                int total = 0;
                for (int n : ps.executeBatch()) {
                    total += n;
                }
                line("batch", total);
            }
            c.commit();
            try (Statement s = c.createStatement()) {
                s.execute("DELETE FROM drv_j_out WHERE id > 1");
                c.rollback();
                try (ResultSet rs = s.executeQuery("SELECT id, label FROM drv_j_out ORDER BY id")) {
                    while (rs.next()) {
                        line("inserted", rs.getInt(1), rs.getString(2));
                    }
                }
                try {
                    s.executeQuery("SELECT aws_sagemaker.invoke_endpoint('model-error-x', NULL, 1)");
                    line("model_error", "none");
                } catch (SQLException e) {
                    line("model_error", "failed");
                }
                try {
                    s.executeQuery("SELECT 1");
                    line("aborted", "no");
                } catch (SQLException e) {
                    line("aborted", e.getSQLState());
                }
                c.rollback();
            }
        }
        System.out.print(OUT);
    }
}
