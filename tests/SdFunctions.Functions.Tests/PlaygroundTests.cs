using System.Text;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Mvc;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// The playground as served: a page that loads only its own two files, works offline (nothing from another origin), and a
/// Content-Security-Policy that holds it to that. How it behaves in a browser is the end-to-end tier's PlaygroundBrowserTests.
/// </summary>
public partial class PlaygroundTests
{
    private static (string Text, string ContentType, Microsoft.AspNetCore.Http.HttpResponse Response) Get(string path, string? file = null)
    {
        var req = TestApp.Request("GET", path);
        var result = (FileContentResult)(file is null ? new PlaygroundApi().Page(req) : new PlaygroundApi().Asset(req, file));
        return (Encoding.UTF8.GetString(result.FileContents), result.ContentType, req.HttpContext.Response);
    }

    [Fact]
    public void ThePageLoadsItsOwnScriptAndStylesAndNothingElse()
    {
        var (html, contentType, response) = Get("/api/playground");
        Assert.Equal("text/html; charset=utf-8", contentType);
        var references = ReferenceAttribute().Matches(html).Select(m => m.Groups["url"].Value).ToList();
        // The empty icon keeps the browser from asking the host for /favicon.ico (a 404 in its console).
        Assert.Equal(["/api/playground/playground.css", "/api/playground/playground.js", "data:,"], references.Order());
        references.Remove("data:,");
        foreach (string reference in references)
        {
            string file = reference["/api/playground/".Length..];
            var (text, type, _) = Get(reference, file);
            Assert.StartsWith(file.EndsWith(".js", StringComparison.Ordinal) ? "text/javascript" : "text/css", type);
            Assert.NotEmpty(text);
        }
        string csp = response.Headers.ContentSecurityPolicy.ToString();
        Assert.Contains("default-src 'none'", csp);
        Assert.Contains("script-src 'self'", csp);
        Assert.Contains("connect-src 'self'", csp);
        Assert.Equal("nosniff", response.Headers.XContentTypeOptions.ToString());
    }

    [Fact]
    public void NothingComesFromAnotherOrigin()
    {
        // The page must work offline against a local host: no CDN, no web fonts, no absolute URLs in any of its files.
        foreach (var (text, _, _) in new[] { Get("/api/playground"), Get("/api/playground/playground.js", "playground.js"), Get("/api/playground/playground.css", "playground.css") })
        {
            Assert.DoesNotMatch(@"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text);
            Assert.DoesNotContain("@import", text);
        }
    }

    [Fact]
    public void EveryControlHasALabel()
    {
        var (html, _, _) = Get("/api/playground");
        var labelled = LabelFor().Matches(html).Select(m => m.Groups["id"].Value).ToHashSet();
        var controls = Control().Matches(html).Select(m => m.Groups["id"].Value).ToList();
        Assert.Equal(6, controls.Count(c => c is "key" or "prompt" or "negative" or "steps" or "guidance" or "seed"));
        Assert.All(controls, id => Assert.Contains(id, labelled));
    }

    [GeneratedRegex("""(?:src|href)="(?<url>[^"#]+)" """, RegexOptions.IgnorePatternWhitespace)]
    private static partial Regex ReferenceAttribute();

    [GeneratedRegex("""<label\s+for="(?<id>[^"]+)" """, RegexOptions.IgnorePatternWhitespace)]
    private static partial Regex LabelFor();

    [GeneratedRegex("""<(?:input|select|textarea)\s+id="(?<id>[^"]+)" """, RegexOptions.IgnorePatternWhitespace)]
    private static partial Regex Control();
}
