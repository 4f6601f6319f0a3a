-- The operator's currency, providers and providers_ips tables: the schema and rows of the
-- operator design the allowlist comes from (a published article on a VoIP operator's billing
-- database), kept here as the project's documented fixture. The CREATE TABLE statements are
-- verbatim (HeidiSQL's style), the rows as the article lists them (an empty cell is NULL). currency is here for providers' foreign key.
-- Loaded into a real MariaDB by tests/e2e/allowlist_export.rs, and read directly by
-- `sbc allowlist export --sql`. The expected export is expected.allowlist beside this file.
SET NAMES utf8mb4;

CREATE TABLE `currency` (
    `id` INT(10) UNSIGNED NOT NULL AUTO_INCREMENT,
    `iso` CHAR(3) NOT NULL DEFAULT '' COLLATE 'utf8mb4_unicode_ci',
    `name_en` VARCHAR(200) NOT NULL DEFAULT '' COLLATE 'utf8mb4_unicode_ci',
    `name_ru` VARCHAR(200) NOT NULL DEFAULT '' COLLATE 'utf8mb4_unicode_ci',
    `numcode` INT(3) UNSIGNED ZEROFILL NULL DEFAULT NULL COMMENT 'numcode for country',
    PRIMARY KEY (`id`),
    UNIQUE INDEX `iso` (`iso`)
)
COMMENT='Справочник валют, iso кодов и наименований'
COLLATE='utf8mb4_unicode_ci'
ENGINE=InnoDB
AUTO_INCREMENT=1
;

INSERT INTO `currency` (`id`, `iso`, `name_en`, `name_ru`, `numcode`) VALUES
	(96, 'RUB', 'Russian Ruble', 'Российский рубль', 643),
	(122, 'USD', 'US Dollar', 'Доллар США', 840),
	(156, 'EUR', 'Euro', 'Евро', 978);

CREATE TABLE `providers` (
    `id` INT(11) UNSIGNED NOT NULL AUTO_INCREMENT,
    `providername` VARCHAR(50) NULL DEFAULT '0' COLLATE 'utf8mb4_unicode_ci',
    `currency_id` INT(10) UNSIGNED NOT NULL DEFAULT '0',
    `noncli_prefix` VARCHAR(10) NULL DEFAULT NULL COLLATE 'utf8mb4_unicode_ci',
    `cli_prefix` VARCHAR(10) NULL DEFAULT NULL COLLATE 'utf8mb4_unicode_ci',
    `premcli_prefix` VARCHAR(10) NULL DEFAULT NULL COLLATE 'utf8mb4_unicode_ci',
    `cli_allowed` ENUM('Y','N') NOT NULL DEFAULT 'N' COLLATE 'utf8mb4_unicode_ci',
    `dynamic_calls` CHAR(1) NULL DEFAULT 'N' COLLATE 'utf8mb4_unicode_ci',
    `append_plus` TINYINT(1) NOT NULL DEFAULT '1',
    `dynamic_calls_caller_id` VARCHAR(30) NULL DEFAULT NULL COLLATE 'utf8mb4_unicode_ci',
    PRIMARY KEY (`id`),
    INDEX `FK_providers_currency` (`currency_id`),
    CONSTRAINT `FK_providers_currency` FOREIGN KEY (`currency_id`) REFERENCES `currency` (`id`)
)
COMMENT='справочник операторов и префиксов для различных типов сервисов'
COLLATE='utf8mb4_unicode_ci'
ENGINE=InnoDB
AUTO_INCREMENT=1
;

INSERT INTO `providers` (`id`, `providername`, `currency_id`, `noncli_prefix`, `cli_prefix`, `premcli_prefix`, `cli_allowed`, `dynamic_calls`, `append_plus`, `dynamic_calls_caller_id`) VALUES
	(3, 'Zadarma', 96, NULL, NULL, NULL, 'N', 'N', 1, NULL),
	(4, 'Multitel', 122, NULL, NULL, NULL, 'N', 'N', 1, NULL),
	(7, 'WestCall', 96, NULL, NULL, NULL, 'Y', 'N', 0, '74951815283'),
	(8, 'VoxBeam', 122, '0011103', '0011101', '0011102', 'Y', 'Y', 1, NULL),
	(11, 'VoiceBuy', 122, '9991', '9992', '9993', 'Y', 'Y', 1, NULL),
	(16, 'IPPort', 96, NULL, NULL, NULL, 'N', 'N', 1, NULL);

CREATE TABLE `providers_ips` (
    `id` INT(11) UNSIGNED NOT NULL AUTO_INCREMENT,
    `provider_id` INT(11) UNSIGNED NOT NULL DEFAULT '0',
    `ipaddress` INT(11) UNSIGNED NOT NULL DEFAULT '2130706433',
    `domainname` VARCHAR(50) NULL DEFAULT NULL COLLATE 'utf8mb4_unicode_ci',
    `direction` ENUM('IN','OUT','IN/OUT') NOT NULL DEFAULT 'IN' COLLATE 'utf8mb4_unicode_ci',
    `proto` ENUM('SIP','IAX2','H323') NOT NULL DEFAULT 'SIP' COLLATE 'utf8mb4_unicode_ci',
    PRIMARY KEY (`id`),
    INDEX `FK_providers_ips_providers` (`provider_id`),
    CONSTRAINT `FK_providers_ips_providers` FOREIGN KEY (`provider_id`) REFERENCES `providers` (`id`)
)
COMMENT='Список адресов операторов связи используемых в работе. direction указывает направление для входящих/исходящих звонков'
COLLATE='utf8mb4_unicode_ci'
ENGINE=InnoDB
AUTO_INCREMENT=1
;

INSERT INTO `providers_ips` (`id`, `provider_id`, `ipaddress`, `domainname`, `direction`, `proto`) VALUES
	(1, 8, 2130706433, 'sbc.voxbeam.com', 'OUT', 'SIP'),
	(2, 8, 1607694320, '95.211.119.240', 'IN', 'SIP'),
	(7, 3, 2130706433, 'sip.zadarma.com', 'OUT', 'SIP'),
	(16, 3, 3106773121, 'proxy-1.fr.zadarma.com', 'IN', 'SIP'),
	(17, 3, 3106773122, 'proxy-2.fr.zadarma.com', 'IN', 'SIP'),
	(31, 16, 1506852360, '89.208.190.8', 'IN', 'SIP'),
	(33, 16, 1506852357, '89.208.190.5', 'IN', 'SIP'),
	(34, 16, 1506852354, 'sip.n1.ipport.net', 'OUT', 'SIP'),
	(35, 11, 2991415097, 'sip.voicebuy.com', 'OUT', 'SIP'),
	(42, 4, 3514573416, '209.124.34.104', 'OUT', 'SIP'),
	(44, 7, 3277775106, '195.94.225.2', 'IN/OUT', 'SIP'),
	(51, 4, 3514573417, '209.124.34.105', 'IN', 'SIP'),
	(52, 4, 3514573446, '209.124.34.134', 'IN', 'SIP');
