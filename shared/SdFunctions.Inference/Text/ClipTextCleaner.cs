using System.Net;
using System.Text;
using System.Text.RegularExpressions;

namespace SdFunctions.Inference.Text;

/// <summary>
/// The text clean-up openai/CLIP and transformers' CLIPTokenizer do before BPE when ftfy is installed:
/// ftfy 6.1 <c>fix_text</c> with its defaults, then whitespace clean-up and lower-casing.
/// We implement the parts of fix_text that change prompts people write (HTML entities, UTF-8 read as
/// Windows-1252, C1 controls, Latin ligatures, full-width forms, curly quotes, line breaks, control
/// characters, NFC); ftfy's statistical "badness" heuristics are replaced by a strict local rule
/// (a run that is valid UTF-8 once re-encoded as Windows-1252 is decoded), which repairs the common
/// cases without touching legitimate accented text.
/// </summary>
public static partial class ClipTextCleaner
{
    /// <summary>fix_text, whitespace_clean, lower(): the string CLIP's pre-tokenizer sees.</summary>
    public static string Clean(string text)
    {
        string fixedText = FixText(text);
        string collapsed = Whitespace().Replace(fixedText, " ").Trim();
        // Python's str.lower() maps U+0130 to "i" + combining dot; .NET's simple mapping drops the dot.
        return collapsed.Replace("\u0130", "i\u0307", StringComparison.Ordinal).ToLowerInvariant();
    }

    /// <summary>ftfy.fix_text with default settings (the subset described on the class).</summary>
    public static string FixText(string text)
    {
        // ftfy's unescape_html="auto": a literal '<' means the text is HTML-ish markup; leave entities alone.
        bool unescapeHtml = !text.Contains('<');
        // ftfy repeats its fixes until the text stops changing (double-escaped entities, double mojibake).
        for (int round = 0; round < 16; round++)
        {
            string before = text;
            if (unescapeHtml) text = HtmlEntity().Replace(text, m => WebUtility.HtmlDecode(m.Value));
            text = TerminalEscape().Replace(text, "");
            text = FixMojibake(text);
            text = FixC1Controls(text);
            text = ReplaceChars(text, LigatureOrWidth);
            text = SingleQuote().Replace(text, "'");
            text = DoubleQuote().Replace(text, "\"");
            text = LineBreak().Replace(text, "\n");
            text = RemoveControlChars(text);
            text = text.Normalize(NormalizationForm.FormC);
            if (text == before) break;
        }
        return text;
    }

    // Python's \s (str.isspace) is .NET's white space plus the four information separators U+001C..U+001F.
    [GeneratedRegex(@"[\s\u001C-\u001F]+")] private static partial Regex Whitespace();
    [GeneratedRegex(@"&#?[0-9A-Za-z]{1,24};")] private static partial Regex HtmlEntity();
    [GeneratedRegex(@"\u001B\[[0-9;]*[A-Za-z]")] private static partial Regex TerminalEscape();
    [GeneratedRegex("[\u02BC\u2018-\u201B]")] private static partial Regex SingleQuote();
    [GeneratedRegex("[\u201C-\u201F]")] private static partial Regex DoubleQuote();
    [GeneratedRegex("\r\n|[\r\u2028\u2029\u0085]")] private static partial Regex LineBreak();

    // Windows-1252 bytes 0x80..0x9F; ftfy's "sloppy" variant maps the five undefined ones to the C1 control.
    private const string Cp1252High =
        "\u20AC\u0081\u201A\u0192\u201E\u2026\u2020\u2021\u02C6\u2030\u0160\u2039\u0152\u008D\u017D\u008F" +
        "\u0090\u2018\u2019\u201C\u201D\u2022\u2013\u2014\u02DC\u2122\u0161\u203A\u0153\u009D\u017E\u0178";

    private static int Cp1252Byte(char c)
    {
        if (c < 0x80 || (c >= 0xA0 && c <= 0xFF)) return c;
        int i = Cp1252High.IndexOf(c);
        return i >= 0 ? 0x80 + i : -1;
    }

    /// <summary>Decodes runs that are UTF-8 bytes wrongly shown as Windows-1252 ("doesnâ€™t" → "doesn’t").</summary>
    private static string FixMojibake(string text)
    {
        StringBuilder? sb = null;
        Span<byte> bytes = stackalloc byte[4];
        int i = 0;
        while (i < text.Length)
        {
            int lead = Cp1252Byte(text[i]);
            int continuation = lead switch { >= 0xC2 and <= 0xDF => 1, >= 0xE0 and <= 0xEF => 2, >= 0xF0 and <= 0xF4 => 3, _ => 0 };
            bool ok = continuation > 0 && i + continuation < text.Length;
            if (ok)
            {
                bytes[0] = (byte)lead;
                for (int k = 1; k <= continuation && ok; k++)
                {
                    int b = Cp1252Byte(text[i + k]);
                    ok = b is >= 0x80 and <= 0xBF;
                    bytes[k] = (byte)b;
                }
            }
            if (ok && Rune.DecodeFromUtf8(bytes[..(continuation + 1)], out Rune rune, out int used) == System.Buffers.OperationStatus.Done
                && used == continuation + 1)
            {
                sb ??= new StringBuilder(text, 0, i, text.Length);
                sb.Append(rune.ToString());
                i += continuation + 1;
                continue;
            }
            sb?.Append(text[i]);
            i++;
        }
        return sb?.ToString() ?? text;
    }

    private static string FixC1Controls(string text) =>
        ReplaceChars(text, c => c is >= '\u0080' and <= '\u009F' ? Cp1252High[c - 0x80].ToString() : null);

    private static readonly Dictionary<char, string> Ligatures = new()
    {
        ['\u0132'] = "IJ", ['\u0133'] = "ij", ['\u0149'] = "\u02BCn", ['\u01F1'] = "DZ", ['\u01F2'] = "Dz", ['\u01F3'] = "dz",
        ['\u01C4'] = "D\u017D", ['\u01C5'] = "D\u017E", ['\u01C6'] = "d\u017E", ['\u01C7'] = "LJ", ['\u01C8'] = "Lj", ['\u01C9'] = "lj",
        ['\u01CA'] = "NJ", ['\u01CB'] = "Nj", ['\u01CC'] = "nj", ['\uFB00'] = "ff", ['\uFB01'] = "fi", ['\uFB02'] = "fl",
        ['\uFB03'] = "ffi", ['\uFB04'] = "ffl", ['\uFB05'] = "\u017Ft", ['\uFB06'] = "st",
    };

    private static string? LigatureOrWidth(char c)
    {
        if (Ligatures.TryGetValue(c, out var s)) return s;
        if (c == '\u3000') return " ";
        // ftfy's width map: every half/full-width form U+FF01..U+FFEF that NFKC changes.
        if (c >= '\uFF01' && c <= '\uFFEF')
        {
            string alt = c.ToString().Normalize(NormalizationForm.FormKC);
            return alt.Length == 1 && alt[0] == c ? null : alt;
        }
        return null;
    }

    private static string RemoveControlChars(string text) => ReplaceChars(text, c =>
        c is (>= '\u0000' and <= '\u0008') or '\u000B' or (>= '\u000E' and <= '\u001F') or '\u007F'
            or (>= '\u206A' and <= '\u206F') or '\uFEFF' or (>= '\uFFF9' and <= '\uFFFC') ? "" : null);

    private static string ReplaceChars(string text, Func<char, string?> map)
    {
        StringBuilder? sb = null;
        for (int i = 0; i < text.Length; i++)
        {
            string? replacement = map(text[i]);
            if (replacement is null) { sb?.Append(text[i]); continue; }
            sb ??= new StringBuilder(text, 0, i, text.Length);
            sb.Append(replacement);
        }
        return sb?.ToString() ?? text;
    }
}
