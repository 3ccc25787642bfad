-- Fraud detection: large transactions the fraud model flags (models/fraud.onnx)
SELECT id, amount, hour, round(aws_sagemaker.invoke_endpoint('fraud', NULL, amount, hour, distance_km, foreign_country, card_present)::numeric, 3) AS fraud_probability FROM transactions WHERE amount > 500 AND aws_sagemaker.invoke_endpoint('fraud', NULL, amount, hour, distance_km, foreign_country, card_present)::float > 0.5 ORDER BY fraud_probability DESC, id LIMIT 10;

-- Ad targeting: customers with the most positive reviews (detect_sentiment)
SELECT r.customer_id, count(*) AS positive_reviews, round(avg(s.confidence)::numeric, 2) AS avg_confidence FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s WHERE s.sentiment = 'POSITIVE' GROUP BY r.customer_id ORDER BY positive_reviews DESC, r.customer_id LIMIT 10;

-- Product recommendations: the five best-rated products for customer 7 (models/recommend.onnx)
SELECT p.id, p.name, p.category, round(aws_sagemaker.invoke_endpoint('recommend', NULL, c.age, c.avg_basket, c.sporty, p.category_id, p.price)::numeric, 2) AS expected_rating FROM customers c JOIN products p ON true WHERE c.id = 7 ORDER BY expected_rating DESC, p.id LIMIT 5;
